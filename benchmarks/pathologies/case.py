"""What a benchmark case is: an ordinary training loop with a declared fault and its proof.

A case subclasses ``Case`` and is registered with ``@register``. The worker builds it
(``setup``), runs ``train_step(step)`` ``steps`` times with ``vs.Monitor`` at its defaults
(``mon.step(loss=loss)`` after each step, ``mon.diagnose()`` at the end), then asks the case
to ``prove`` that its pathology really happened (or, for a healthy case, that it trained),
with a figure computed in plain torch. ``CATEGORIES`` gives each fault category its root code
and the codes that count as detecting it; a case may narrow or widen them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

HEALTHY = "healthy"
CALIBRATION, HOLDOUT = "calibration", "holdout"
NONFINITE = ("NONFINITE_FORWARD", "NONFINITE_GRAD", "NONFINITE_LOSS")

# category: (root code, codes that count as detecting it). Codes marked NEW in issue 11 do
# not exist in vitalstats.monitor.CODES until the monitor adds them.
CATEGORIES: dict[str, tuple[str | None, tuple[str, ...]]] = {
    HEALTHY: (None, ()),
    "lr_too_high": (
        "LR_TOO_HIGH",
        ("LR_TOO_HIGH", "GRAD_EXPLODING", "LOSS_DIVERGENCE", "UPDATE_RATIO_HIGH", *NONFINITE),
    ),
    "lr_too_low": ("UPDATE_RATIO_LOW", ("UPDATE_RATIO_LOW", "LOSS_PLATEAU")),
    "vanishing_gradients": ("GRAD_VANISHING", ("GRAD_VANISHING",)),
    "exploding_gradients": ("GRAD_EXPLODING", ("GRAD_EXPLODING",)),
    "saturated_activations": ("ACT_SATURATED", ("ACT_SATURATED",)),
    "dead_relu": ("DEAD_RELU", ("DEAD_RELU",)),
    "bad_init": ("ACT_STD_DEPTH", ("ACT_STD_DEPTH",)),
    "nonfinite_input": ("NONFINITE_INPUT", ("NONFINITE_INPUT",)),
    "nonfinite_forward": ("NONFINITE_FORWARD", ("NONFINITE_FORWARD", "NONFINITE_LOSS")),
    "loss_spike": ("LOSS_SPIKE", ("LOSS_SPIKE",)),
    "unscaled_inputs": ("INPUT_SCALE", ("INPUT_SCALE",)),
    "grad_not_zeroed": ("GRAD_NOT_ZEROED", ("GRAD_NOT_ZEROED",)),
    "loss_on_probabilities": ("LOSS_ON_PROBABILITIES", ("LOSS_ON_PROBABILITIES",)),
    "step_in_eval_mode": ("STEP_IN_EVAL_MODE", ("STEP_IN_EVAL_MODE",)),
    "bn_train_in_eval": ("BN_TRAIN_IN_EVAL", ("BN_TRAIN_IN_EVAL",)),
    "bn_few_values": ("BN_FEW_VALUES", ("BN_FEW_VALUES",)),
    "logit_growth": ("LOGIT_GROWTH", ("LOGIT_GROWTH",)),
    "amp_steps_skipped": ("AMP_STEPS_SKIPPED", ("AMP_STEPS_SKIPPED",)),
}


@dataclass(frozen=True)
class Proof:
    """A plain-torch figure showing the pathology happened (or that a healthy run trained):
    ``figure`` names it, ``value`` is it, ``threshold`` the bar it had to pass."""

    figure: str
    value: float
    threshold: str
    holds: bool

    def text(self) -> str:
        return f"{self.figure} = {self.value:.4g} ({self.threshold})"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["value"] = self.value if math.isfinite(self.value) else str(self.value)
        return out


def at_least(figure: str, value: float, limit: float) -> Proof:
    return Proof(figure, float(value), f">= {limit:g}", bool(value >= limit))


def at_most(figure: str, value: float, limit: float) -> Proof:
    return Proof(figure, float(value), f"<= {limit:g}", bool(value <= limit))


class Case:
    """One training run. Subclasses set the class attributes, ``setup`` (build ``model``,
    ``optimizer`` and data; the worker seeds torch first) and ``train_step`` (one optimiser
    step exactly as a user writes it, returning the loss tensor); ``prove`` returns a
    ``Proof`` (default: a healthy run's loss fell to half its start)."""

    name: ClassVar[str]
    arch: ClassVar[str]  # architecture, e.g. "GPT-2 (transformers)"
    category: ClassVar[str] = HEALTHY
    expected: ClassVar[tuple[str, ...] | None] = None  # None: the category's
    root: ClassVar[str | None] = None  # None: the category's
    # Codes that name the cause the case plants as well as ``root`` does, when the case
    # plants it through another documented fault (unstandardised inputs that overflow float16,
    # an lr spike that kills units, a large init that explodes): each use says why.
    also_root: ClassVar[tuple[str, ...]] = ()
    steps: ClassVar[int] = 300
    seed: ClassVar[int] = 0
    # "calibration": the thresholds were tuned with this case in view; "holdout": written
    # after they were frozen and never used to tune them (scored apart, docs/pathologies.md)
    split: ClassVar[str] = CALIBRATION
    summary: ClassVar[str] = ""  # one line: the loop and what is wrong with it

    model: nn.Module
    optimizer: torch.optim.Optimizer

    def setup(self) -> None:
        raise NotImplementedError

    def train_step(self, step: int) -> torch.Tensor:
        raise NotImplementedError

    def before_training(self) -> None:
        """Plain-torch measurements before the monitor attaches (proof only; not timed)."""

    def prove(self, losses: list[float]) -> Proof:
        return trained(losses)

    @classmethod
    def expected_codes(cls) -> tuple[str, ...]:
        return cls.expected if cls.expected is not None else CATEGORIES[cls.category][1]

    @classmethod
    def root_code(cls) -> str | None:
        return cls.root if cls.root is not None else CATEGORIES[cls.category][0]

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "arch": cls.arch,
            "category": cls.category,
            "expected": list(cls.expected_codes()),
            "root": cls.root_code(),
            "also_root": list(cls.also_root),
            "steps": cls.steps,
            "split": cls.split,
            "summary": cls.summary,
        }


def trained(losses: list[float], ratio: float = 0.5, window: int = 10) -> Proof:
    """Healthy proof: mean of the last ``window`` losses <= ``ratio`` x mean of the first."""
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    value = last / first if math.isfinite(first) and first > 0 else math.nan
    figure = f"final/initial loss ({first:.3g} -> {last:.3g})"
    return Proof(figure, value, f"<= {ratio:g}", bool(math.isfinite(value) and value <= ratio))


def untrained(losses: list[float], floor: float, window: int = 20) -> Proof:
    """Fault proof of a run that did not train: mean of the last ``window`` losses over the
    mean of the first ``window`` stays at least ``floor`` (close to 1)."""
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    return at_least("final/initial loss (no training)", last / first, floor)


def first_nonfinite(losses: list[float]) -> int:
    """Index of the first NaN/Inf loss, -1 if none."""
    return next((i for i, v in enumerate(losses) if not math.isfinite(v)), -1)


REGISTRY: dict[str, type[Case]] = {}


def register(cls: type[Case]) -> type[Case]:
    """Class decorator: add a case to ``REGISTRY`` (names are unique)."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"duplicate benchmark case name {cls.name!r}")
    if cls.category not in CATEGORIES:
        raise ValueError(f"case {cls.name!r}: unknown category {cls.category!r}")
    REGISTRY[cls.name] = cls
    return cls


def load_cases(extra_files: tuple[str, ...] = ()) -> dict[str, type[Case]]:
    """Import every module of ``pathologies.cases`` (and ``extra_files``); the registry."""
    import importlib
    import importlib.util
    import pkgutil

    from pathologies import cases

    for info in sorted(pkgutil.iter_modules(cases.__path__), key=lambda i: i.name):
        importlib.import_module(f"pathologies.cases.{info.name}")
    for i, path in enumerate(extra_files):
        spec = importlib.util.spec_from_file_location(f"_extra_cases_{i}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load cases from {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return dict(REGISTRY)
