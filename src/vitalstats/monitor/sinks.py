"""Where a monitor's flushed windows go (rank 0 only): a ``vs.RunStore`` and TensorBoard.

``StoreSink`` writes the run's layers once, then scalars, histograms and findings per flush;
``TensorBoardSink`` mirrors the same rows into TensorBoard event files
(``vs.Monitor(..., tensorboard="runs/tb")``): scalars as ``<metric>/<layer>`` (run-level
metrics keep their name) and the fixed-bin histograms as TensorBoard histograms. Both write
at flush time, never per step.
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vitalstats.monitor.config import MonitorConfig
from vitalstats.monitor.findings import Finding
from vitalstats.monitor.metrics import StepMetrics
from vitalstats.monitor.probes import metric_histogram_edges

if TYPE_CHECKING:
    from vitalstats.monitor.monitor import Monitor


def _json_able(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()  # once, at run start
    if isinstance(value, (tuple, list)):
        return [_json_able(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_able(v) for k, v in value.items()}
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


def run_metadata(monitor: Monitor) -> dict[str, Any]:
    """Model summary, optimiser hyper-parameters, monitor config, torch version, hostname."""
    model = monitor.inner
    out: dict[str, Any] = {
        "model": {
            "class": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "layers_watched": len(monitor.layers),
            "compiled": monitor.compiled,
        },
        "monitor": _json_able(dataclasses.asdict(monitor.config)),
        "torch_version": torch.__version__,
        "hostname": socket.gethostname(),
    }
    if monitor.optimizer is not None:
        groups = [
            {k: _json_able(v) for k, v in group.items() if k != "params"}
            for group in monitor.optimizer.param_groups
        ]
        out["optimizer"] = {"class": type(monitor.optimizer).__name__, "param_groups": groups}
    return out


class StoreSink:
    """One run in one store: layers at start, scalars/histograms/findings per flush."""

    def __init__(self, store: Any, owned: bool, run_id: int, monitor: Monitor) -> None:
        from vitalstats.store import RunStore

        self.store, self.owned, self.run_id = store, owned, run_id
        self.path = Path(store.path)
        self.edges = metric_histogram_edges(monitor.config)
        self._commit_in_background = isinstance(store, RunStore)  # else: a duck-typed store

    @classmethod
    def open(
        cls, store: Any, run_name: str | None, run_config: dict[str, Any] | None, monitor: Monitor
    ) -> StoreSink | None:
        """None without a store or on ranks other than 0."""
        import torch.distributed as dist

        if store is None:
            return None
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return None
        from vitalstats.store import LayerInfo, RunStore

        owned = isinstance(store, (str, Path))
        if owned:
            Path(store).parent.mkdir(parents=True, exist_ok=True)
            store = RunStore(store)
        elif not hasattr(store, "add_scalars"):
            raise TypeError(
                f"vs.Monitor: store must be a path or a vs.RunStore, got {type(store).__name__}"
            )
        config = run_metadata(monitor)
        if run_config:
            config["user"] = _json_able(run_config)
        run_id = store.start_run(name=run_name, config=config)
        store.add_layers(run_id, [LayerInfo(*info) for info in monitor.layer_infos()])
        return cls(store, owned, run_id, monitor)

    def write(self, window: list[StepMetrics], findings: list[Finding]) -> None:
        """Buffer the window's rows and ask for a commit. An error from one call (a failed
        earlier commit surfacing, a broken store) does not stop the others: every row is
        handed over, then the first error is raised."""
        store, run = self.store, self.run_id
        errors: list[Exception] = []

        def hand_over(call: Any, *args: Any, **kwargs: Any) -> None:
            try:
                call(*args, **kwargs)
            except Exception as error:
                errors.append(error)

        for metrics in window:
            rows = [(layer, metric, value) for (layer, metric), value in metrics.scalars.items()]
            if rows:
                hand_over(store.add_scalars, run, metrics.step, rows)
            for (layer, metric), counts in metrics.histograms.items():
                hand_over(store.add_histogram, run, metrics.step, layer, metric,
                          self.edges[metric], counts)  # fmt: skip
        if findings:
            hand_over(store.add_findings, run, [f.to_dict() for f in findings])
        if self._commit_in_background:  # the store's thread commits: the step does not wait
            hand_over(store.flush, wait=False)
        else:
            hand_over(store.flush)
        if errors:
            raise errors[0]

    def close(self, status: str) -> None:
        self.store.end_run(self.run_id, status=status)
        if self.owned:
            self.store.close()


class TensorBoardSink:
    def __init__(self, writer: Any, config: MonitorConfig) -> None:
        self.writer = writer
        self.edges = metric_histogram_edges(config)

    @classmethod
    def open(cls, log_dir: str | Path | None, config: MonitorConfig) -> TensorBoardSink | None:
        """None without a directory or on ranks other than 0."""
        import torch.distributed as dist

        if log_dir is None:
            return None
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return None
        from vitalstats.store.tensorboard import TensorBoardWriter

        return cls(TensorBoardWriter(log_dir), config)

    def write(self, window: list[StepMetrics]) -> None:
        for metrics in window:
            rows = [(layer, metric, value) for (layer, metric), value in metrics.scalars.items()]
            if rows:
                self.writer.add_scalars(metrics.step, rows)
            for (layer, metric), counts in metrics.histograms.items():
                self.writer.add_histogram(metrics.step, layer, metric, self.edges[metric], counts)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
