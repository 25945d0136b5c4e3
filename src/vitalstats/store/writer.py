"""Buffered, batched writes to a run store: one connection, one background flusher thread.

Callers append rows to in-memory buffers (cheap, under a short lock); ``flush`` swaps the
buffers out and commits them in one ``BEGIN IMMEDIATE`` transaction with ``executemany``.
A daemon thread flushes every ``flush_interval`` seconds, or sooner once ``flush_rows`` rows
are waiting. A failed flush puts its rows back and re-raises in the caller's next call (whose
own rows are queued first), so nothing is dropped, silently or not. After ``fork`` the child never touches the parent's connection.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

Result = TypeVar("Result")
ScalarRow = tuple[int, str, str, int, float]  # run_id, layer, metric, step, value
HistogramRow = tuple[int, str, str, int, bytes, str, bytes, str]
FindingRow = tuple[int, int | None, str, str, str | None, str, str]  # run_id, step, code, ...
SeriesKey = tuple[int, str, str, str]  # run_id, kind, layer, metric


class StoreWriter:
    """Owns the SQLite connection; every use of it goes through ``transaction`` or ``read``."""

    def __init__(self, connection: sqlite3.Connection, *, flush_interval: float, flush_rows: int):
        self._connection = connection
        self._flush_interval = flush_interval
        self._flush_rows = flush_rows
        self._connection_lock = threading.RLock()  # serialises transactions, reads, flushes
        self._buffer_lock = threading.Lock()  # guards the three buffers only, held briefly
        self._scalars: list[ScalarRow] = []
        self._histograms: list[HistogramRow] = []
        self._findings: list[FindingRow] = []
        self._series_ids: dict[SeriesKey, int] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._background_error: BaseException | None = None
        self._owner_pid = os.getpid()
        self.closed = False

    # ---- buffering (caller's thread) -------------------------------------------------------
    def buffer(
        self,
        scalars: Sequence[ScalarRow] = (),
        histograms: Sequence[HistogramRow] = (),
        findings: Sequence[FindingRow] = (),
    ) -> None:
        """Queue rows for the next flush; starts the flusher thread on first use. A failure
        of the flusher thread is raised here after the rows are queued: they are kept."""
        self._check_process()
        with self._buffer_lock:
            self._scalars.extend(scalars)
            self._histograms.extend(histograms)
            self._findings.extend(findings)
            waiting = len(self._scalars) + len(self._histograms) + len(self._findings)
        if self._thread is None and self._flush_interval > 0:
            self._start_thread()
        if waiting >= self._flush_rows:
            self._wake.set()
        self._raise_background_error()

    def pending_rows(self) -> int:
        with self._buffer_lock:
            return len(self._scalars) + len(self._histograms) + len(self._findings)

    # ---- committing ------------------------------------------------------------------------
    def flush(self, wait: bool = True) -> None:
        """Commit every buffered row in one transaction (no-op when nothing is buffered).

        ``wait=False`` hands the commit to the flusher thread and returns at once (the
        caller's thread pays nothing for it); without a thread (``flush_interval=0``) it
        commits now."""
        self._raise_background_error()
        if not wait and self._flush_interval > 0 and not self.closed:
            if self._thread is None:
                self._start_thread()
            self._wake.set()
            return
        self._flush()

    def _flush(self) -> None:
        if os.getpid() != self._owner_pid or self.closed:
            return
        with self._connection_lock:  # swap under this lock too, so batches commit in order
            with self._buffer_lock:
                scalars, self._scalars = self._scalars, []
                histograms, self._histograms = self._histograms, []
                findings, self._findings = self._findings, []
            if not (scalars or histograms or findings):
                return
            new_series: dict[SeriesKey, int] = {}
            try:
                self.transaction(
                    lambda connection: self._write(
                        connection, scalars, histograms, findings, new_series
                    )
                )
            except BaseException:
                with self._buffer_lock:  # put the batch back in front: a later flush retries
                    self._scalars[:0] = scalars
                    self._histograms[:0] = histograms
                    self._findings[:0] = findings
                raise
            self._series_ids.update(new_series)

    def _write(
        self,
        connection: sqlite3.Connection,
        scalars: list[ScalarRow],
        histograms: list[HistogramRow],
        findings: list[FindingRow],
        new_series: dict[SeriesKey, int],
    ) -> None:
        def series_id(run_id: int, kind: str, layer: str, metric: str) -> int:
            key = (run_id, kind, layer, metric)
            found = self._series_ids.get(key)
            if found is None:
                found = new_series.get(key)
            if found is None:
                connection.execute(
                    "INSERT OR IGNORE INTO series (run_id, kind, layer, metric) VALUES (?,?,?,?)",
                    key,
                )
                found = connection.execute(
                    "SELECT series_id FROM series WHERE run_id=? AND kind=? AND layer=? "
                    "AND metric=?",
                    key,
                ).fetchone()[0]
                new_series[key] = found
            return found

        connection.executemany(
            "INSERT OR REPLACE INTO scalars (series_id, step, value) VALUES (?,?,?)",
            [
                (series_id(run_id, "scalar", layer, metric), step, value)
                for run_id, layer, metric, step, value in scalars
            ],
        )
        connection.executemany(
            "INSERT OR REPLACE INTO histograms (series_id, step, edges, edges_dtype, counts, "
            "counts_dtype) VALUES (?,?,?,?,?,?)",
            [
                (series_id(run_id, "histogram", layer, metric), step, *blobs)
                for run_id, layer, metric, step, *blobs in histograms
            ],
        )
        connection.executemany(
            "INSERT INTO findings (run_id, step, code, severity, layer, message, fix) "
            "VALUES (?,?,?,?,?,?,?)",
            findings,
        )
        touched = {row[0] for row in scalars} | {row[0] for row in histograms}
        touched |= {row[0] for row in findings}
        now = time.time()
        connection.executemany(
            "UPDATE runs SET updated_at = ? WHERE run_id = ?", [(now, run) for run in touched]
        )

    def transaction(self, body: Callable[[sqlite3.Connection], Result]) -> Result:
        """Run ``body(connection)`` inside one write transaction, committed or rolled back."""
        self._check_process()
        with self._connection_lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                result = body(self._connection)
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")
            return result

    def read(self, body: Callable[[sqlite3.Connection], Result]) -> Result:
        """Run a read-only ``body(connection)`` on this process's committed view."""
        self._check_process()
        with self._connection_lock:
            return body(self._connection)

    # ---- the flusher thread and shutdown ---------------------------------------------------
    def _start_thread(self) -> None:
        with self._buffer_lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run_flusher, name="vitalstats-store-flusher", daemon=True
            )
        self._thread.start()

    def _run_flusher(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._flush()
            except BaseException as error:  # surfaced by the owner's next call
                self._background_error = error

    def _check_process(self) -> None:
        if os.getpid() != self._owner_pid:
            raise RuntimeError(
                f"this RunStore was opened in process {self._owner_pid} and cannot be used in "
                f"forked process {os.getpid()} (a SQLite connection must not cross a fork); "
                f"open the store path again in this process"
            )

    def _raise_background_error(self) -> None:
        error, self._background_error = self._background_error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Stop the flusher, commit what is buffered, close the connection. Idempotent."""
        if self.closed or os.getpid() != self._owner_pid:
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        try:
            self._flush()
        finally:
            self.closed = True
            with self._connection_lock:
                self._connection.close()
