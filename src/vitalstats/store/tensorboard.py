"""TensorBoard event files, another output of the run store's rows: exported from a store
(``vitalstats export``) or written live by a monitor (``vs.Monitor(..., tensorboard=DIR)``).

Tags: a run-level metric keeps its name (``loss``, ``lr``); a per-layer metric is
``<metric>/<layer>`` (``grad_norm/net.0.weight``) so TensorBoard groups one metric's layers on
one card. Scalars are written as TensorBoard's float32. A stored histogram (B+1 edges, B
counts) becomes a TensorBoard histogram with bucket limits = the B right edges and the same
counts; TensorBoard also wants min, max, sum and sum of squares, which a binned histogram only
bounds: min/max are the outer edges of the first/last non-empty bin, and sum and sum of
squares use the bin centres (exact when every value sits at its bin centre).

Needs the ``tensorboard`` package (``pip install 'vitalstats[tensorboard]'``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

RUN_LEVEL = ""  # the layer name of run-level metrics


def tag(layer: str, metric: str) -> str:
    """The TensorBoard tag of ``metric`` for ``layer`` ("" = run-level)."""
    return metric if layer == RUN_LEVEL else f"{metric}/{layer}"


def histogram_summary(edges: np.ndarray, counts: np.ndarray) -> dict[str, Any] | None:
    """The fields of ``SummaryWriter.add_histogram_raw`` for a binned histogram; None if empty.

    bucket_limits = edges[1:], bucket_counts = counts; min/max = outer edges of the first and
    last non-empty bins; sum = sum(count * centre); sum_squares = sum(count * centre ** 2).
    """
    edges = np.asarray(edges, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if edges.ndim != 1 or counts.shape != (len(edges) - 1,):
        raise ValueError(
            f"histogram needs B+1 edges and B counts, got {edges.shape} edges, {counts.shape} counts"
        )
    occupied = np.flatnonzero(counts > 0)
    if len(occupied) == 0:
        return None
    centres = (edges[:-1] + edges[1:]) / 2
    return {
        "min": float(edges[occupied[0]]),
        "max": float(edges[occupied[-1] + 1]),
        "num": float(counts.sum()),
        "sum": float((counts * centres).sum()),
        "sum_squares": float((counts * centres**2).sum()),
        "bucket_limits": edges[1:].tolist(),
        "bucket_counts": counts.tolist(),
    }


def _summary_writer_class():  # -> type[torch.utils.tensorboard.SummaryWriter]
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError(
            "TensorBoard export needs the tensorboard package: pip install 'vitalstats[tensorboard]'"
        ) from error
    return SummaryWriter


class TensorBoardWriter:
    """A live sink with the store's row shapes, for ``vs.Monitor(..., tensorboard=DIR)``.

    ``add_scalars(step, [(layer, metric, value), ...])`` and
    ``add_histogram(step, layer, metric, edges, counts)``; values are host numbers.
    """

    def __init__(self, log_dir: str | os.PathLike[str]):
        self.log_dir = Path(log_dir)
        self._writer = _summary_writer_class()(log_dir=str(self.log_dir))

    def add_scalars(self, step: int, rows: Iterable[tuple[str, str, float]]) -> None:
        for layer, metric, value in rows:
            self._writer.add_scalar(tag(layer, metric), float(value), global_step=int(step))

    def add_histogram(
        self, step: int, layer: str, metric: str, edges: np.ndarray, counts: np.ndarray
    ) -> None:
        summary = histogram_summary(edges, counts)
        if summary is not None:
            self._writer.add_histogram_raw(tag(layer, metric), global_step=int(step), **summary)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run_directory_name(name: str) -> str:
    """A run name made safe as one directory name (TensorBoard shows it as the run)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"
    return safe[:100]


def export_tensorboard(
    store_path: str | os.PathLike[str],
    log_dir: str | os.PathLike[str],
    run: int | str | Iterable[int | str] | None = None,
) -> list[Path]:
    """Write every scalar series and histogram of ``run`` (None = all runs) in the store to
    ``log_dir/<run name>/``; returns the directories written. Re-exporting into the same
    directory adds a second event file, which TensorBoard merges by step."""
    from vitalstats.store import RunStore

    writer_class = _summary_writer_class()
    log_dir = Path(log_dir)
    written: list[Path] = []
    with RunStore(Path(store_path), readonly=True) as store:
        if run is None:
            infos = store.runs()
        else:
            infos = [store.run(item) for item in ([run] if isinstance(run, int | str) else run)]
        used: set[str] = set()
        for info in infos:
            directory_name = run_directory_name(info.name)
            if directory_name in used:
                directory_name = f"{directory_name}-{info.run_id}"
            used.add(directory_name)
            directory = log_dir / directory_name
            writer = writer_class(log_dir=str(directory))
            try:
                _export_run(store, info.run_id, writer)
            finally:
                writer.close()
            written.append(directory)
    return written


def _export_run(store: Any, run_id: int, writer: Any) -> None:
    for layer in store.series_layers(run_id, kind="scalar"):
        for metric in store.metrics(run_id, layer=layer, kind="scalar"):
            steps, values = store.series(run_id, layer, metric)
            name = tag(layer, metric)
            for step, value in zip(steps.tolist(), values.tolist()):
                writer.add_scalar(name, value, global_step=step)
    for layer in store.series_layers(run_id, kind="histogram"):
        for metric in store.metrics(run_id, layer=layer, kind="histogram"):
            for step, edges, counts in store.histograms(run_id, layer, metric):
                summary = histogram_summary(edges, counts)
                if summary is not None:
                    writer.add_histogram_raw(tag(layer, metric), global_step=int(step), **summary)
