"""One story per run: findings grouped by code, root causes first, cascades attached.

``story(findings)`` turns the monitor's raw findings (one per code and layer, as recorded)
into what a reader acts on:

1. the same code on many layers becomes one finding listing them (``Finding.layers``; the
   earliest occurrence speaks for all);
2. a finding that a more fundamental one explains is attached to it as a consequence
   (``Finding.consequences``), following ``EXPLAINS`` transitively: a learning rate far too
   high explains exploding gradients, which explain the first NaN in the forward pass, which
   explains the NaN loss;
3. root causes come first: by the most severe finding of their cascade, then by how
   fundamental the finding is (``_priority``), then by step.

Causes precede their effects in time. A finding made at step 0, before any update, is about
the data, the loop or the initialisation: no training-dynamics cause (``DYNAMIC``: a
learning rate too high, growing logits, skipped AMP steps) can explain it, and it is judged
more fundamental than they are. So an activation-std trend at initialisation explains the
exploding gradients and NaN that follow, while the same trend appearing after a learning
rate blew the weights up is explained by the learning rate.

It is a pure function of the findings, so the report and the CLI tell the same story from a
run store as ``Monitor.diagnose()`` does live.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vitalstats.monitor.findings import Finding

_NONFINITE = ("NONFINITE_FORWARD", "NONFINITE_GRAD", "NONFINITE_LOSS", "BN_RUNNING_NONFINITE")
_LOSS = ("LOSS_SPIKE", "LOSS_DIVERGENCE", "LOSS_PLATEAU")

# cause -> the findings it explains when both are present (transitive).
EXPLAINS: dict[str, tuple[str, ...]] = {
    "NONFINITE_INPUT": (*_NONFINITE, "LOSS_SPIKE", "GRAD_EXPLODING", "INPUT_SCALE"),
    "GRAD_NOT_ZEROED": ("LR_TOO_HIGH", "GRAD_EXPLODING", "UPDATE_RATIO_HIGH", *_NONFINITE,
                        *_LOSS, "DEAD_RELU", "ACT_SATURATED", "LOGIT_GROWTH"),
    "LOSS_ON_PROBABILITIES": ("LOSS_PLATEAU", "GRAD_VANISHING", "ACT_SATURATED",
                              "UPDATE_RATIO_LOW"),
    "INPUT_SCALE": ("ACT_SATURATED", "ACT_STD_DEPTH", "GRAD_EXPLODING", "DEAD_RELU",
                    "LR_TOO_HIGH", "UPDATE_RATIO_HIGH", "GRAD_VANISHING", "AMP_STEPS_SKIPPED",
                    *_NONFINITE, *_LOSS),
    "STEP_IN_EVAL_MODE": ("BN_DRIFT", "LR_TOO_HIGH", "GRAD_EXPLODING", "GRAD_VANISHING",
                          "DEAD_RELU", "UPDATE_RATIO_HIGH", "UPDATE_RATIO_LOW", *_NONFINITE,
                          *_LOSS),
    "LR_TOO_HIGH": ("GRAD_EXPLODING", "UPDATE_RATIO_HIGH", *_NONFINITE, *_LOSS, "DEAD_RELU",
                    "ACT_SATURATED", "ACT_STD_DEPTH", "LOGIT_GROWTH", "BN_DRIFT",
                    "GRAD_VANISHING"),
    "ACT_STD_DEPTH": ("GRAD_VANISHING", "GRAD_EXPLODING", "ACT_SATURATED", "DEAD_RELU",
                      "UPDATE_RATIO_LOW", "LOSS_PLATEAU", "LR_TOO_HIGH", *_NONFINITE),
    "AMP_STEPS_SKIPPED": ("LOSS_PLATEAU", "UPDATE_RATIO_LOW", "NONFINITE_GRAD"),
    "LOGIT_GROWTH": ("LOSS_SPIKE", "LOSS_DIVERGENCE", *_NONFINITE),
    "ACT_SATURATED": ("GRAD_VANISHING", "UPDATE_RATIO_LOW", "LOSS_PLATEAU"),
    "GRAD_EXPLODING": (*_NONFINITE, "LOSS_SPIKE", "LOSS_DIVERGENCE", "UPDATE_RATIO_HIGH",
                       "DEAD_RELU"),
    "NONFINITE_FORWARD": ("NONFINITE_LOSS", "NONFINITE_GRAD", "BN_RUNNING_NONFINITE"),
    "NONFINITE_GRAD": ("NONFINITE_FORWARD", "NONFINITE_LOSS", "BN_RUNNING_NONFINITE"),
    "DEAD_RELU": ("GRAD_VANISHING", "LOSS_PLATEAU"),
    "GRAD_VANISHING": ("UPDATE_RATIO_LOW", "LOSS_PLATEAU"),
    "UPDATE_RATIO_LOW": ("LOSS_PLATEAU",),
}  # fmt: skip

# Most fundamental first: a data or loop bug before a hyper-parameter before a symptom.
ROOT_ORDER: tuple[str, ...] = (
    "NONFINITE_INPUT", "GRAD_NOT_ZEROED", "LOSS_ON_PROBABILITIES", "INPUT_SCALE",
    "STEP_IN_EVAL_MODE", "BN_TRAIN_IN_EVAL", "BN_BUFFER_DIVERGENCE", "BN_RUNNING_NONFINITE",
    "BN_TRACK_RUNNING_STATS_FLIPPED", "BN_BATCH_STATS_AT_INFERENCE", "BN_FROZEN_BUT_UPDATING",
    "BN_HIGH_MOMENTUM", "BN_FEW_VALUES", "LR_TOO_HIGH", "ACT_STD_DEPTH", "AMP_STEPS_SKIPPED",
    "LOGIT_GROWTH", "ACT_SATURATED", "GRAD_EXPLODING", "NONFINITE_FORWARD", "NONFINITE_GRAD",
    "NONFINITE_LOSS", "DEAD_RELU", "GRAD_VANISHING", "UPDATE_RATIO_HIGH", "UPDATE_RATIO_LOW",
    "LOSS_DIVERGENCE", "LOSS_SPIKE", "LOSS_PLATEAU", "BN_DRIFT", "BIAS_BEFORE_NORM",
)  # fmt: skip

_SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}

# Causes that act through training (they need updates to show): they never explain a
# finding made before any update, and such findings outrank them.
DYNAMIC = frozenset({"LR_TOO_HIGH", "LOGIT_GROWTH", "AMP_STEPS_SKIPPED"})
# Bugs of the data, the loop or a layer's configuration: the most fundamental of all.
LOOP_BUGS = frozenset(ROOT_ORDER[: ROOT_ORDER.index("BN_FEW_VALUES") + 1])


def _at_start(finding: Finding) -> bool:
    """Made before any update: a static check (step None) or step 0."""
    return finding.step is None or finding.step == 0


def _priority(finding: Finding) -> tuple[int, int, float]:
    """(group, rank in ROOT_ORDER, step): loop bugs, then findings at initialisation, then
    training-dynamics causes, then later symptoms."""
    if finding.code in LOOP_BUGS:
        group = 0
    elif finding.code in DYNAMIC:
        group = 2
    elif _at_start(finding):
        group = 1
    else:
        group = 3
    return (group, _rank(finding.code), _step_key(finding))


def _rank(code: str) -> int:
    return ROOT_ORDER.index(code) if code in ROOT_ORDER else len(ROOT_ORDER)


def _explained(cause: str, present: set[str]) -> set[str]:
    """Every code ``cause`` explains: directly, or through a chain of findings that are
    ``present`` in this run (a link that was not observed does not connect two findings)."""
    seen: set[str] = set()
    todo = list(EXPLAINS.get(cause, ()))
    while todo:
        code = todo.pop()
        if code not in seen and code != cause:
            seen.add(code)
            if code in present:
                todo.extend(EXPLAINS.get(code, ()))
    return seen


def _as_finding(item: Finding | Mapping[str, Any]) -> Finding:
    return item if isinstance(item, Finding) else Finding.from_dict(dict(item))


def _step_key(finding: Finding) -> float:
    return -1.0 if finding.step is None else float(finding.step)


def group_by_code(findings: Iterable[Finding | Mapping[str, Any]]) -> list[Finding]:
    """One finding per code: the earliest occurrence, with ``layers`` listing every layer
    the code was seen on (in order of first occurrence)."""
    by_code: dict[str, list[Finding]] = {}
    for item in findings:
        finding = _as_finding(item)
        by_code.setdefault(finding.code, []).append(finding)
    grouped = []
    for same in by_code.values():
        first = min(same, key=_step_key)
        layers: list[str] = []
        for finding in sorted(same, key=_step_key):
            for layer in finding.all_layers:
                if layer not in layers:
                    layers.append(layer)
        grouped.append(first.replace(layers=tuple(layers), consequences=()))
    return grouped


def story(findings: Iterable[Finding | Mapping[str, Any]]) -> list[Finding]:
    """Root causes first, each with the findings it explains attached (see the module doc).

    Accepts ``Finding`` objects or run-store dicts; returns new ``Finding`` objects. Every
    input finding appears exactly once: as a root or as one root's consequence."""
    grouped = sorted(group_by_code(findings), key=_priority)
    present = {f.code for f in grouped}
    roots: list[Finding] = []
    attached: dict[str, list[Finding]] = {}

    def explains(cause: Finding, effect: Finding) -> bool:
        if cause.code in DYNAMIC and _at_start(effect):
            return False  # nothing has trained yet: the effect is not the cause's doing
        return effect.code in _explained(cause.code, present)

    for finding in grouped:
        cause = next((r for r in roots if explains(r, finding)), None)
        if cause is None:
            roots.append(finding)
            attached[finding.code] = []
        else:
            attached[cause.code].append(finding)
    told = [
        root.replace(consequences=tuple(sorted(attached[root.code], key=_step_key)))
        for root in roots
    ]

    def severity(finding: Finding) -> int:
        cascade = (finding, *finding.consequences)
        return min(_SEVERITY_RANK.get(f.severity, 3) for f in cascade)

    return sorted(told, key=lambda f: (severity(f), *_priority(f)))


def flatten(told: Iterable[Finding]) -> list[Finding]:
    """Roots and their consequences in story order, one finding per line (for tables)."""
    out = []
    for root in told:
        out.append(root)
        out.extend(root.consequences)
    return out
