"""Read what the report needs from a run store, through the store's public readers only.

The report never sees live hooks: everything here comes from a store file, so a report can be
drawn from any run, finished or still being written by another process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

SeriesKind = Literal["scalar", "histogram"]
RUN_LEVEL = ""  # the layer name of run-level metrics (loss, lr, ...)

# The store's metric names (docs/monitor.md) used by the report and `vitalstats watch`, in one
# place so they can be switched to vitalstats.monitor.registry when it lands.
LOSS, LOSS_EWM_MEAN, LOSS_EWM_STD, EVAL_LOSS = "loss", "loss_ewm_mean", "loss_ewm_std", "eval_loss"
LR, STEPS_PER_SECOND, GRAD_NORM_TOTAL = "lr", "steps_per_second", "grad_norm_total"
ACT_MEAN, ACT_STD, ACT_SATURATED = "act_mean", "act_std", "act_saturated_fraction"
ACT_DEAD, ACT_NONFINITE = "act_dead_fraction", "act_nonfinite_fraction"
GRAD_NORM, UPDATE_TO_DATA = "grad_norm", "update_to_data_log10"
ADAM_M_HAT, ADAM_SQRT_V_HAT, ADAM_STEP_RMS = (
    "adam_m_hat_abs_mean", "adam_sqrt_v_hat_mean", "adam_step_rms"
)  # fmt: skip
BN_MEAN_DRIFT, BN_VAR_LOG_RATIO = "bn_mean_drift", "bn_var_log_ratio"
ACT_HIST = "act_hist"  # counts over activation values (end bins hold values outside and +-Inf)
GRAD_HIST = "grad_hist"  # counts over log10 |gradient| (first bin holds zeros)

# Run-level series drawn in "Runs compared": (metric, axis label, log axis). Any other run-level
# metric found in a store (a newer monitor's) is drawn after these under its own name.
RUN_LEVEL_SERIES: tuple[tuple[str, str, bool], ...] = (
    (LOSS_EWM_MEAN, "loss (EWM mean)", True),
    (EVAL_LOSS, "eval loss", True),
    (GRAD_NORM_TOTAL, "total gradient norm", True),
    (LR, "learning rate", False),
    (STEPS_PER_SECOND, "steps per second", False),
)

# Module types whose outputs the makemore figure and the by-depth plots look at.
ACTIVATION_TYPES = frozenset(
    {"Tanh", "Sigmoid", "ReLU", "LeakyReLU", "ReLU6", "GELU", "SiLU", "ELU", "SELU", "Mish",
     "Hardtanh", "Softplus", "PReLU", "CELU", "RReLU", "Hardswish", "Hardsigmoid", "Tanhshrink",
     "Softsign", "LogSigmoid", "NewGELUActivation", "GELUActivation", "FastGELUActivation",
     "QuickGELUActivation", "SiLUActivation"}
)  # fmt: skip
NORM_TYPES = frozenset(
    {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LayerNorm", "GroupNorm",
     "RMSNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "BatchRenorm1d",
     "BatchRenorm2d", "LlamaRMSNorm", "T5LayerNorm"}
)  # fmt: skip
WEIGHTED_TYPES = frozenset(
    {"Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
     "ConvTranspose3d", "Embedding", "EmbeddingBag", "Bilinear", "Conv1D", "LazyLinear"}
)  # fmt: skip


@dataclass
class RunData:
    """One run of a store, read on demand and cached (a store read happens once per series)."""

    store: Any  # vitalstats.store.RunStore
    info: Any  # vitalstats.store.RunInfo
    _series: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    _histograms: dict[tuple[str, str], list[tuple[int, np.ndarray, np.ndarray]]] = field(
        default_factory=dict
    )

    @property
    def name(self) -> str:
        return self.info.name

    @cached_property
    def layers(self) -> list[Any]:
        """The watched modules (``LayerInfo``) in forward/registration order."""
        return list(self.store.layers(self.info.run_id))

    @cached_property
    def findings(self) -> list[dict[str, Any]]:
        return [_finding_dict(f) for f in self.store.findings(self.info.run_id)]

    @cached_property
    def metrics(self) -> frozenset[str]:
        return frozenset(self.store.metrics(self.info.run_id))

    def series(self, layer: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) sorted by step; empty arrays when nothing was recorded."""
        key = (layer, metric)
        if key not in self._series:
            steps, values = self.store.series(self.info.run_id, layer, metric)
            self._series[key] = (np.asarray(steps, np.int64), np.asarray(values, np.float64))
        return self._series[key]

    def histograms(self, layer: str, metric: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """[(step, edges, counts)] sorted by step, read once per (layer, metric)."""
        key = (layer, metric)
        if key not in self._histograms:
            self._histograms[key] = list(self.store.histograms(self.info.run_id, layer, metric))
        return self._histograms[key]

    @cached_property
    def histogram_metrics(self) -> frozenset[str]:
        return frozenset(self.store.metrics(self.info.run_id, kind="histogram"))

    def layers_with(self, metric: str, kind: SeriesKind = "scalar") -> list[str]:
        """Names of the layers (modules or parameters) that have a series of ``metric``.

        Modules come in the store's layer order; parameter names (``net.0.weight``) follow
        the module that owns them.
        """
        if metric not in (self.metrics if kind == "scalar" else self.histogram_metrics):
            return []
        named = self.store.series_layers(self.info.run_id, metric, kind=kind)
        order = self._positions

        def position(name: str) -> tuple[int, str]:
            owner = self.owner(name)
            return (order.get(owner, len(order)), name)

        return sorted((name for name in named if name != RUN_LEVEL), key=position)

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {layer.name: index for index, layer in enumerate(self.layers)}

    @cached_property
    def _types(self) -> dict[str, str]:
        return {layer.name: layer.type for layer in self.layers}

    def owner(self, name: str) -> str:
        """The watched module a name belongs to: itself, or the module owning a parameter
        (``net.0`` for ``net.0.weight``); "" when none is watched."""
        owner = name
        while owner and owner not in self._positions:
            owner = owner.rpartition(".")[0]
        return owner

    def layer_type(self, name: str) -> str:
        """The module class of a layer, or of the module owning a parameter ("" if unknown)."""
        return self._types.get(name) or self._types.get(self.owner(name), "")


def _finding_dict(finding: Any) -> dict[str, Any]:
    if isinstance(finding, dict):
        return finding
    names = ("code", "severity", "layer", "step", "message", "fix")
    return {name: getattr(finding, name, None) for name in names}


def open_runs(store_path: str | Path, run: Any = None) -> tuple[Any, list[RunData]]:
    """Open ``store_path`` read-only and select runs: ``None`` = all, a run_id or name, or a
    sequence of them. Raises ``vitalstats.store.StoreError`` for a missing, foreign or newer
    store and for an unknown run (naming the known ones)."""
    from vitalstats.store import RunStore

    store = RunStore(Path(store_path), readonly=True)
    try:
        if run is None:
            infos = store.runs()
        else:
            requested: Sequence[Any] = [run] if isinstance(run, int | str) else list(run)
            infos = [store.run(item) for item in requested]
        unique = {info.run_id: info for info in infos}
        return store, [RunData(store, info) for info in unique.values()]
    except BaseException:
        store.close()
        raise
