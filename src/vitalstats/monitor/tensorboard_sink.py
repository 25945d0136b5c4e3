"""Mirroring a monitor's flushed windows into TensorBoard event files (rank 0 only).

``vs.Monitor(..., tensorboard="runs/tb")`` writes the same rows as the run store, at flush
time (never per step): scalars as ``<metric>/<layer>`` (run-level metrics keep their name)
and the fixed-bin histograms as TensorBoard histograms. Needs the ``tensorboard`` package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitalstats.monitor.config import MonitorConfig
from vitalstats.monitor.metrics import StepMetrics
from vitalstats.monitor.probes import metric_histogram_edges


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
        from vitalstats.report.tensorboard import TensorBoardWriter

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
