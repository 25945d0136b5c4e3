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

# Module types whose outputs the makemore figure and the by-depth plots look at.
ACTIVATION_TYPES = frozenset(
    {"Tanh", "Sigmoid", "ReLU", "LeakyReLU", "ReLU6", "GELU", "SiLU", "ELU", "SELU", "Mish",
     "Hardtanh", "Softplus", "PReLU", "CELU", "RReLU", "Hardswish", "Hardsigmoid", "Tanhshrink",
     "Softsign", "LogSigmoid"}
)  # fmt: skip


@dataclass
class RunData:
    """One run of a store, read on demand and cached (a store read happens once per series)."""

    store: Any  # vitalstats.store.RunStore
    info: Any  # vitalstats.store.RunInfo
    _series: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

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
        return list(self.store.histograms(self.info.run_id, layer, metric))

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
        order = {layer.name: index for index, layer in enumerate(self.layers)}

        def position(name: str) -> tuple[int, str]:
            owner = name
            while owner and owner not in order:
                owner = owner.rpartition(".")[0]
            return (order.get(owner, len(order)), name)

        return sorted((name for name in named if name != RUN_LEVEL), key=position)

    def layer_type(self, name: str) -> str:
        for layer in self.layers:
            if layer.name == name:
                return layer.type
        return ""


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
