"""What the rules know about the run besides its metrics, and where findings go."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from vitalstats.monitor.config import Thresholds
from vitalstats.monitor.findings import FindingLog, make_finding
from vitalstats.monitor.probes import is_embedding, is_weighted

Role = str  # "matrix" | "embedding" | "gain" | "bias" | "other"

_NORMS = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
    nn.modules.normalization.LocalResponseNorm,
)  # fmt: skip


def parameter_role(module: nn.Module, name: str, dim: int) -> Role:
    """What a parameter is, for the rules that only apply to weight matrices:

    * ``matrix``: a weight of ndim >= 2 of a Linear/Conv/recurrent/attention layer;
    * ``embedding``: an embedding table (token or position);
    * ``gain``: a normalisation layer's weight (and any other 1-d ``weight``);
    * ``bias``: a bias;
    * ``other``: everything else (ViT's ``cls_token``, position tables kept as raw
      parameters, mask tokens, scalars).
    """
    leaf = name.rpartition(".")[2]
    if is_embedding(module):
        return "embedding"
    if isinstance(module, _NORMS) or type(module).__name__.endswith("Norm"):
        return "bias" if "bias" in leaf else "gain"
    if "bias" in leaf:
        return "bias"
    if dim >= 2 and "weight" in leaf:
        return "matrix"
    if dim == 1 and "weight" in leaf:
        return "gain"
    return "other"


def optimizer_family(optimizer: object | None) -> str:
    """ "adam" (Adam-family: per-element normalised steps), "sgd", "quasi_newton"
    (L-BFGS), "adaptive" (RMSprop, Adagrad, Adadelta), "other" or "none"."""
    if optimizer is None:
        return "none"
    name = type(optimizer).__name__.lower()
    groups = getattr(optimizer, "param_groups", [])
    if "lbfgs" in name:
        return "quasi_newton"
    if groups and all("betas" in g for g in groups):
        return "adam"
    if "sgd" in name:
        return "sgd"
    if any(k in name for k in ("rmsprop", "adagrad", "adadelta")):
        return "adaptive"
    return "other"


@dataclass
class RunContext:
    """Model facts the rules read (set when the monitor attaches; ``forward_order`` and
    ``links`` are filled by the hooks as layers run) and the finding log they write to."""

    thresholds: Thresholds
    log: FindingLog
    parameter_roles: dict[str, Role] = field(default_factory=dict)
    parameter_order: list[str] = field(default_factory=list)
    weighted_layers: set[str] = field(default_factory=set)
    embedding_layers: set[str] = field(default_factory=set)
    forward_order: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)
    optimizer_family: str = "none"
    nonfinite_step: int | None = None  # first step with a NaN/Inf anywhere (input, layer, loss)
    evidence: dict[str, float] = field(default_factory=dict)  # the extremes each rule judged
    _matrices: set[str] | None = field(default=None, repr=False)

    def poisoned(self, step: int) -> bool:
        """True from the first non-finite step on: a symptom measured on NaN/Inf values
        (every ReLU 'dead' because NaN > 0 is False) is not another pathology."""
        return self.nonfinite_step is not None and step >= self.nonfinite_step

    def matrices(self) -> set[str]:
        """The parameters with the role "matrix" (computed once)."""
        if self._matrices is None:
            self._matrices = {n for n, role in self.parameter_roles.items() if role == "matrix"}
        return self._matrices

    def note(self, name: str, value: float, worst: str = "max") -> None:
        """Keep the most extreme value a rule judged (``worst`` "max" or "min"): what the
        thresholds are calibrated against (benchmarks/pathologies, docs/monitor.md)."""
        if not math.isfinite(value):
            return
        old = self.evidence.get(name)
        if old is None or (value > old if worst == "max" else value < old):
            self.evidence[name] = value

    def found_at_start(self, *codes: str) -> bool:
        """One of ``codes`` was found at step 0, before any update (an initialisation fact)."""
        return any(f.code in codes and f.step == 0 for f in self.log.all())

    def add(self, code: str, layer: str, step: int | None, message: str, fix: str) -> bool:
        return self.log.add(make_finding(code, layer, step, message, fix))

    def has(self, code: str, layer: str | None = None) -> bool:
        return self.log.has(code, layer)


def weighted(module: nn.Module) -> bool:
    return is_weighted(module) and not is_embedding(module)
