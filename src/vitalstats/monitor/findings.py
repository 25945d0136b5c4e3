"""Findings: what the monitor concluded, as plain frozen records with stable codes.

A finding is data, not a log line: ``Finding(code, severity, layer, step, message, fix)``.
``CODES`` is the single source of truth for the codes (docs/monitor.md mirrors it); a code
never changes meaning once released.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["info", "warning", "error"]

CODES: dict[str, tuple[Severity, str]] = {
    # code: (severity, one-line meaning)
    "GRAD_VANISHING": ("warning", "a weight's gradient norm is tiny next to the largest layer's"),
    "GRAD_EXPLODING": ("error", "the total gradient norm exceeds the threshold"),
    "ACT_SATURATED": ("warning", "many tanh/sigmoid outputs sit in the flat tails"),
    "DEAD_RELU": ("warning", "many ReLU units output zero for the whole batch"),
    "ACT_STD_DEPTH": ("warning", "activation std grows or shrinks with depth (initialisation)"),
    "UPDATE_RATIO_LOW": ("warning", "std(update)/std(weight) far below about 1e-3"),
    "UPDATE_RATIO_HIGH": ("warning", "std(update)/std(weight) far above about 1e-3"),
    "NONFINITE_INPUT": ("error", "the model input contained NaN/Inf"),
    "NONFINITE_FORWARD": ("error", "a layer produced the first NaN/Inf in the forward pass"),
    "NONFINITE_GRAD": ("error", "a gradient became NaN/Inf while the forward pass was finite"),
    "NONFINITE_LOSS": ("error", "the loss became NaN/Inf"),
    "LOSS_DIVERGENCE": ("error", "the smoothed loss rose far above its best value"),
    "LOSS_SPIKE": ("warning", "one loss value jumped many standard deviations above its EWM mean"),
    "BN_TRAIN_IN_EVAL": ("error", "a BatchNorm ran in training mode during evaluation/no_grad"),
    "BN_FEW_VALUES": ("warning", "a BatchNorm normalised with batch statistics from few values"),
    "BIAS_BEFORE_NORM": ("info", "a layer's bias feeds a BatchNorm that cancels it"),
    "BN_TRACK_RUNNING_STATS_FLIPPED": (
        "warning",
        "track_running_stats was changed after construction",
    ),
    "BN_BATCH_STATS_AT_INFERENCE": ("warning", "a BatchNorm in eval mode uses batch statistics"),
    "BN_HIGH_MOMENTUM": ("warning", "BatchNorm momentum above 0.5 (Keras convention by mistake?)"),
    "BN_DRIFT": ("warning", "batch statistics drift far from the running statistics"),
    "BN_RUNNING_NONFINITE": ("error", "running_mean/running_var contain NaN/Inf"),
    "BN_FROZEN_BUT_UPDATING": ("warning", "frozen BatchNorm parameters, updating running stats"),
    "BN_BUFFER_DIVERGENCE": ("error", "BatchNorm buffers differ across distributed ranks"),
    "LR_TOO_HIGH": ("error", "the learning rate is too high: large updates with a loss that rises"),
    "LOSS_PLATEAU": ("warning", "the loss stopped improving relative to its own noise"),
    "INPUT_SCALE": ("warning", "input features far from unit scale, or scales orders apart"),
    "GRAD_NOT_ZEROED": ("error", "gradients accumulate across optimiser steps (no zero_grad)"),
    "LOSS_ON_PROBABILITIES": ("error", "probabilities fed to a loss that expects logits"),
    "STEP_IN_EVAL_MODE": (
        "warning",
        "optimiser steps while normalisation/dropout are in eval mode",
    ),
    "LOGIT_GROWTH": ("warning", "the output logits grow step after step"),
    "AMP_STEPS_SKIPPED": ("warning", "the GradScaler skipped most optimiser steps for overflow"),
}


@dataclass(frozen=True)
class Finding:
    """One diagnosis: ``code`` (see ``CODES``), ``severity``, the ``layer`` (module or
    parameter name, "" for the whole run), the first optimiser ``step`` it was seen at (``None``
    for static checks), a ``message`` saying what was measured and a ``fix``.

    ``story()`` (what ``Monitor.diagnose()`` returns) fills the two grouping fields:
    ``layers``, every layer the same code was seen on (``layer`` is the first), and
    ``consequences``, the findings this root cause explains (e.g. LR_TOO_HIGH ->
    GRAD_EXPLODING -> NONFINITE_FORWARD -> NONFINITE_LOSS), in step order."""

    code: str
    severity: Severity
    layer: str
    step: int | None
    message: str
    fix: str
    layers: tuple[str, ...] = ()
    consequences: tuple[Finding, ...] = ()

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(
                f"Finding: unknown code {self.code!r}; expected one of vitalstats.monitor.CODES "
                f"({', '.join(sorted(CODES))})"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (what ``RunStore.add_findings`` accepts; it stores the
        first six): ``layers`` as a list, ``consequences`` as a list of such dicts."""
        out = asdict(self)
        out["layers"] = list(self.layers)
        out["consequences"] = [c.to_dict() for c in self.consequences]
        return out

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Finding:
        """A finding from ``to_dict()`` output or a run-store row. A code unknown to this
        version (a store written by a newer vitalstats) is kept as it is, not rejected."""
        layers = tuple(row.get("layers") or ())
        consequences = tuple(cls.from_dict(c) for c in row.get("consequences") or ())
        fields = (
            str(row["code"]),
            row.get("severity") or CODES.get(str(row["code"]), ("warning",))[0],
            row.get("layer") or "",
            None if row.get("step") is None else int(row["step"]),
            row.get("message") or "",
            row.get("fix") or "",
            layers,
            consequences,
        )
        return cls(*fields) if fields[0] in CODES else cls._unchecked(fields)

    @classmethod
    def _unchecked(cls, fields: tuple[Any, ...]) -> Finding:
        finding = object.__new__(cls)  # bypasses the known-code check only
        for name, value in zip(_FIELD_NAMES, fields):
            object.__setattr__(finding, name, value)
        return finding

    def replace(self, **changes: Any) -> Finding:
        """A copy with ``changes`` (``dataclasses.replace`` that keeps unknown codes)."""
        if self.code in CODES:
            return dataclasses.replace(self, **changes)
        values = {name: getattr(self, name) for name in _FIELD_NAMES}
        values.update(changes)
        return self._unchecked(tuple(values[name] for name in _FIELD_NAMES))

    @property
    def all_layers(self) -> tuple[str, ...]:
        """``layers`` when grouped, else ``(layer,)`` (or ``()`` for a run-level finding)."""
        return self.layers or ((self.layer,) if self.layer else ())

    def __str__(self) -> str:
        shown = self.all_layers
        where = f" {', '.join(shown[:4])}" if shown else ""
        if len(shown) > 4:
            where += f" (+{len(shown) - 4} more)"
        when = f" at step {self.step}" if self.step is not None else ""
        text = f"[{self.severity}] {self.code}{where}{when}: {self.message} Fix: {self.fix}"
        if self.consequences:
            text += " Explains: " + ", ".join(c.code for c in self.consequences) + "."
        return text


_FIELD_NAMES = ("code", "severity", "layer", "step", "message", "fix", "layers", "consequences")


class TrainingStopped(RuntimeError):
    """Raised by ``Monitor.step()`` when a finding matches the monitor's ``stop_on``: the run
    is unhealthy and the user asked not to spend more compute on it. ``findings`` holds the
    findings that matched; everything measured so far is in the run store."""

    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        lines = "\n".join(f"  {f}" for f in findings)
        super().__init__(f"vs.Monitor stopped the run (stop_on matched):\n{lines}")


def make_finding(code: str, layer: str, step: int | None, message: str, fix: str) -> Finding:
    """A ``Finding`` whose severity comes from ``CODES``."""
    return Finding(code, CODES[code][0], layer, step, message, fix)


class FindingLog:
    """Findings kept once per ``(code, layer)``: the first occurrence wins."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], Finding] = {}
        self._unsaved: list[Finding] = []
        self._unannounced: list[Finding] = []

    def add(self, finding: Finding) -> bool:
        key = (finding.code, finding.layer)
        if key in self._by_key:
            return False
        self._by_key[key] = finding
        self._unsaved.append(finding)
        self._unannounced.append(finding)
        return True

    def take_new(self) -> list[Finding]:
        """Findings added since the last call (what the monitor announces at each flush)."""
        out, self._unannounced = self._unannounced, []
        return out

    def has(self, code: str, layer: str | None = None) -> bool:
        if layer is not None:
            return (code, layer) in self._by_key
        return any(c == code for c, _ in self._by_key)

    def all(self) -> list[Finding]:
        return list(self._by_key.values())

    def take_unsaved(self) -> list[Finding]:
        out, self._unsaved = self._unsaved, []
        return out
