"""``RunStore``: the monitor's SQLite run log, written by one process and read by any.

store = vs.RunStore("runs/exp1.sqlite")
run_id = store.start_run(name="exp1", config={"lr": 1e-3})
store.add_scalars(run_id, step=10, rows=[("", "loss", 0.7), ("net.0", "act_std", 0.9)])
store.end_run(run_id)                         # flushes, then marks the run finished
steps, values = store.series("exp1", "", "loss")
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import weakref
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from vitalstats.store import reader
from vitalstats.store.codec import as_float, as_step, encode_histogram
from vitalstats.store.records import (
    END_STATUSES,
    FINDING_FIELDS,
    EndStatus,
    LayerInfo,
    RunInfo,
    SeriesKind,
    StoreError,
)
from vitalstats.store.schema import environment, open_connection
from vitalstats.store.writer import FindingRow, ScalarRow, StoreWriter

RunRef = int | str


class RunStore:
    """A SQLite file (WAL mode) holding runs, their layers, scalar series, histograms, findings.

    Writes are buffered and committed in batches by a background thread every
    ``flush_interval`` seconds (or once ``flush_rows`` rows wait), by ``flush()``, by
    ``end_run`` and ``close``, and at interpreter exit. A process killed mid-run loses at most
    the rows added since the last commit. Readers (this object or another process) see
    committed rows while a run is being written. ``readonly=True`` opens an existing store
    only (StoreError when the file is missing) and never writes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        flush_interval: float = 2.0,
        flush_rows: int = 50_000,
    ):
        if flush_interval < 0 or flush_rows < 1:
            raise ValueError(
                f"RunStore: flush_interval must be >= 0 s (0 = no background thread) and "
                f"flush_rows >= 1, got {flush_interval} and {flush_rows}"
            )
        self.path = Path(path)
        self.readonly = readonly
        connection = open_connection(self.path, readonly=readonly)
        self._writer = StoreWriter(connection, flush_interval=flush_interval, flush_rows=flush_rows)
        self._known_runs: dict[RunRef, int] = {}
        # Flush and close at garbage collection or interpreter exit, whichever comes first.
        self._finalizer = weakref.finalize(self, self._writer.close)

    # ---- writing ---------------------------------------------------------------------------
    def start_run(self, name: str | None = None, config: Mapping[str, Any] | None = None) -> int:
        """Create a run with status "running" and return its run_id.

        ``config`` is any JSON-able mapping (values JSON cannot hold are stored as ``str``).
        A name already used in this file gets a suffix (``exp1`` -> ``exp1-2``); ``None``
        names the run ``run-<run_id>``. The store also records the environment.
        """
        self._check_writable("start_run")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"start_run: name must be a non-empty str or None, got {name!r}")
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"start_run: config must be a dict, got {type(config).__name__}")
        config_json = json.dumps(dict(config or {}), default=str)
        environment_json = json.dumps(environment(), default=str)

        def insert(connection: sqlite3.Connection) -> int:
            run_id = connection.execute("SELECT coalesce(max(run_id), 0) + 1 FROM runs")
            run_id = run_id.fetchone()[0]
            run_name = _unique_name(connection, name or f"run-{run_id}")
            now = time.time()
            connection.execute(
                "INSERT INTO runs (run_id, name, status, started_at, updated_at, ended_at, "
                "config, environment) VALUES (?, ?, 'running', ?, ?, NULL, ?, ?)",
                (run_id, run_name, now, now, config_json, environment_json),
            )
            return run_id

        run_id = self._writer.transaction(insert)
        self._known_runs[run_id] = run_id
        return run_id

    def add_layers(self, run_id: RunRef, layers: Iterable[LayerInfo]) -> None:
        """Record the watched modules of a run, in order (committed immediately)."""
        run = self._writable_run(run_id, "add_layers")
        rows = []
        for index, layer in enumerate(layers):
            if not isinstance(layer, LayerInfo):
                raise TypeError(
                    f"add_layers: item {index} is {type(layer).__name__}; expected "
                    f"vs.store.LayerInfo(name, type, depth, num_params)"
                )
            rows.append((run, layer.name, layer.type, int(layer.depth), int(layer.num_params)))

        def insert(connection: sqlite3.Connection) -> None:
            start = connection.execute(
                "SELECT coalesce(max(position), -1) + 1 FROM layers WHERE run_id = ?", (run,)
            ).fetchone()[0]
            connection.executemany(
                "INSERT OR REPLACE INTO layers (run_id, name, position, type, depth, num_params)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(r[0], r[1], start + i, *r[2:]) for i, r in enumerate(rows)],
            )

        self._writer.transaction(insert)

    def add_scalars(self, run_id: RunRef, step: int, rows: Iterable[tuple[str, str, Any]]) -> None:
        """Buffer ``(layer, metric, value)`` rows at ``step``; layer "" is run-level.

        Values are Python/numpy numbers or one-element tensors (a tensor is copied to the
        host here: pass floats from one batched ``.tolist()`` to avoid per-value syncs).
        NaN and +-Inf are kept. A repeated (layer, metric, step) keeps the last value.
        """
        run = self._writable_run(run_id, "add_scalars")
        step = as_step(step, "add_scalars")
        buffered: list[ScalarRow] = []
        append = buffered.append
        for index, row in enumerate(rows):
            try:
                layer, metric, value = row
            except (TypeError, ValueError):
                raise TypeError(
                    f"add_scalars: row {index} is {row!r}; expected a (layer, metric, value) tuple"
                ) from None
            if type(layer) is not str or type(metric) is not str or not metric:
                _check_names(layer, metric, f"add_scalars row {index}")
            if type(value) is not float:  # the fast path above is plain floats
                value = as_float(value, f"add_scalars row {index} ({layer!r}, {metric!r})")
            append((run, layer, metric, step, value))
        self._writer.buffer(scalars=buffered)

    def add_histogram(
        self, run_id: RunRef, step: int, layer: str, metric: str, edges: Any, counts: Any
    ) -> None:
        """Buffer one histogram: ``edges`` (B+1,) and ``counts`` (B,), numpy or tensors."""
        run = self._writable_run(run_id, "add_histogram")
        step = as_step(step, "add_histogram")
        _check_names(layer, metric, "add_histogram")
        blobs = encode_histogram(edges, counts, f"add_histogram({layer!r}, {metric!r})")
        self._writer.buffer(histograms=[(run, layer, metric, step, *blobs)])

    def add_findings(self, run_id: RunRef, findings: Iterable[Any]) -> None:
        """Buffer findings: objects or dicts with code, severity, layer, step, message, fix."""
        run = self._writable_run(run_id, "add_findings")
        rows: list[FindingRow] = [
            _finding_row(run, finding, i) for i, finding in enumerate(findings)
        ]
        self._writer.buffer(findings=rows)

    def flush(self, wait: bool = True) -> None:
        """Commit every buffered row now (one transaction); ``wait=False`` asks the
        background thread to commit them at once and returns without waiting (readers in
        other processes see the rows a few milliseconds later; this object's reads always
        see them)."""
        if not self.readonly:
            self._writer.flush(wait)

    def end_run(self, run_id: RunRef, status: EndStatus = "finished") -> None:
        """Flush, then mark the run ``"finished"``, ``"crashed"`` or ``"interrupted"``."""
        if status not in END_STATUSES:
            raise ValueError(f"end_run: status must be one of {END_STATUSES}, got {status!r}")
        run = self._writable_run(run_id, "end_run")
        self._writer.flush()
        now = time.time()
        self._writer.transaction(
            lambda connection: connection.execute(
                "UPDATE runs SET status = ?, ended_at = ?, updated_at = ? WHERE run_id = ?",
                (status, now, now, run),
            )
        )

    def close(self) -> None:
        """Flush and close. Idempotent; also runs at garbage collection and at exit."""
        self._finalizer()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> Any:
        raise TypeError(
            f"a RunStore cannot be pickled (it holds a SQLite connection); pass the path "
            f"{str(self.path)!r} and open vs.RunStore(path) in the other process"
        )

    def __repr__(self) -> str:
        state = "closed" if self._writer.closed else ("read-only" if self.readonly else "open")
        return f"RunStore({str(self.path)!r}, {state})"

    # ---- reading (committed rows; a writer's own buffer is flushed first) -------------------
    def runs(self) -> list[RunInfo]:
        """Every run in the file, by run_id."""
        return self._read(reader.runs)

    def run(self, run: RunRef) -> RunInfo:
        """One run's record, by run_id or name."""
        return self._read(lambda c: reader.run_info(c, self._resolve(c, run)))

    def layers(self, run: RunRef) -> list[LayerInfo]:
        """The run's watched modules in the order they were added."""
        return self._read(lambda c: reader.layers(c, self._resolve(c, run)))

    def metrics(
        self, run: RunRef, layer: str | None = None, kind: SeriesKind = "scalar"
    ) -> list[str]:
        """Sorted metric names with data in ``run`` (for ``layer`` only, if given)."""
        return self._read(lambda c: reader.metrics(c, self._resolve(c, run), layer, kind))

    def series_layers(
        self, run: RunRef, metric: str | None = None, kind: SeriesKind = "scalar"
    ) -> list[str]:
        """Sorted layer names with data in ``run`` (modules, parameters and "" for run-level)."""
        return self._read(lambda c: reader.series_layers(c, self._resolve(c, run), metric, kind))

    def series(
        self, run: RunRef, layer: str, metric: str, *, start: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(steps int64, values float64) sorted by step; empty arrays if nothing was written.
        ``start``: only steps >= start (to follow a live run without re-reading it)."""
        return self._read(lambda c: reader.series(c, self._resolve(c, run), layer, metric, start))

    def latest(
        self, run: RunRef, metrics: Iterable[str] | None = None
    ) -> dict[tuple[str, str], tuple[int, float]]:
        """``{(layer, metric): (step, value)}``: every scalar series' last recorded value (only
        ``metrics`` when given). Cheap on a long run: one index seek per series."""
        wanted = None if metrics is None else list(metrics)
        return self._read(lambda c: reader.latest_scalars(c, self._resolve(c, run), wanted))

    def histograms(
        self, run: RunRef, layer: str, metric: str
    ) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """[(step, edges float64 (B+1,), counts (B,) int64 or float64)] sorted by step."""
        return self._read(lambda c: reader.histograms(c, self._resolve(c, run), layer, metric))

    def findings(self, run: RunRef) -> list[dict[str, Any]]:
        """The run's findings as dicts (code, severity, layer, step, message, fix), in order."""
        return self._read(lambda c: reader.findings(c, self._resolve(c, run)))

    # ---- internals -------------------------------------------------------------------------
    def _read(self, body: Any) -> Any:
        if self._writer.closed:
            raise StoreError(f"{self.path}: this RunStore is closed; open it again to read")
        if not self.readonly and self._writer.pending_rows():
            self._writer.flush()
        return self._writer.read(body)

    def _resolve(self, connection: sqlite3.Connection, run: RunRef) -> int:
        return reader.resolve_run(connection, self.path, run)

    def _check_writable(self, where: str) -> None:
        if self.readonly:
            raise StoreError(f"{where}: {self.path} was opened with readonly=True")
        if self._writer.closed:
            raise StoreError(f"{where}: this RunStore for {self.path} is closed")

    def _writable_run(self, run: RunRef, where: str) -> int:
        self._check_writable(where)
        reader.check_run_ref(run)
        run_id = self._known_runs.get(run)
        if run_id is None:
            run_id = self._writer.read(lambda c: self._resolve(c, run))
            self._known_runs[run] = run_id
        return run_id


def _unique_name(connection: sqlite3.Connection, name: str) -> str:
    taken = {row[0] for row in connection.execute("SELECT name FROM runs")}
    candidate, suffix = name, 2
    while candidate in taken:
        candidate, suffix = f"{name}-{suffix}", suffix + 1
    return candidate


def _check_names(layer: Any, metric: Any, where: str) -> None:
    if type(layer) is not str or type(metric) is not str or not metric:
        raise TypeError(
            f'{where}: layer must be a str ("" for run-level) and metric a non-empty str, '
            f"got layer={layer!r}, metric={metric!r}"
        )


def _finding_row(run_id: int, finding: Any, index: int) -> FindingRow:
    values = []
    for name in FINDING_FIELDS:
        if isinstance(finding, Mapping):
            present, value = name in finding, finding.get(name)
        else:
            present, value = hasattr(finding, name), getattr(finding, name, None)
        if not present:
            raise TypeError(
                f"add_findings: finding {index} ({type(finding).__name__}) has no {name!r}; "
                f"each finding needs {', '.join(FINDING_FIELDS)}"
            )
        values.append(value.value if isinstance(value, Enum) else value)
    code, severity, layer, step, message, fix = values
    step = None if step is None else as_step(step, f"add_findings finding {index}")
    layer = None if layer is None else str(layer)
    return (run_id, step, str(code), str(severity), layer, str(message), str(fix))
