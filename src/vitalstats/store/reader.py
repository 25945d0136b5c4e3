"""Queries behind the store's readers; each takes a connection and returns plain data."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitalstats.store.codec import decode_histogram
from vitalstats.store.records import FINDING_FIELDS, LayerInfo, RunInfo, StoreError

_KNOWN_RUNS_LISTED = 20


def resolve_run(connection: sqlite3.Connection, path: Path, run: int | str) -> int:
    """The run_id of ``run`` (a run_id, or a name; a string of digits also tries run_id)."""
    check_run_ref(run)
    if isinstance(run, str):
        row = connection.execute("SELECT run_id FROM runs WHERE name = ?", (run,)).fetchone()
        if row is None and run.isdigit():
            row = connection.execute("SELECT run_id FROM runs WHERE run_id = ?", (int(run),))
            row = row.fetchone()
    else:
        row = connection.execute("SELECT run_id FROM runs WHERE run_id = ?", (int(run),))
        row = row.fetchone()
    if row is None:
        raise StoreError(f"no run {run!r} in {path}; {_known_runs(connection)}")
    return row[0]


def check_run_ref(run: object) -> None:
    if isinstance(run, bool) or not isinstance(run, int | str | np.integer):
        raise TypeError(f"run must be a run_id (int) or a run name (str), got {run!r}")


def _known_runs(connection: sqlite3.Connection) -> str:
    rows = connection.execute("SELECT run_id, name FROM runs ORDER BY run_id").fetchall()
    if not rows:
        return "the store has no runs yet"
    listed = ", ".join(f"{run_id} {name!r}" for run_id, name in rows[:_KNOWN_RUNS_LISTED])
    more = len(rows) - _KNOWN_RUNS_LISTED
    return f"known runs: {listed}" + (f" and {more} more" if more > 0 else "")


_RUN_COLUMNS = "run_id, name, started_at, ended_at, status, config, environment, updated_at"


def _run_info(row: tuple[Any, ...]) -> RunInfo:
    run_id, name, started_at, ended_at, status, config, environment, updated_at = row
    return RunInfo(
        run_id=run_id,
        name=name,
        started_at=started_at,
        ended_at=ended_at,
        status=status,
        config=json.loads(config),
        environment=json.loads(environment),
        updated_at=updated_at,
    )


def runs(connection: sqlite3.Connection) -> list[RunInfo]:
    rows = connection.execute(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY run_id").fetchall()
    return [_run_info(row) for row in rows]


def run_info(connection: sqlite3.Connection, run_id: int) -> RunInfo:
    query = f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?"
    return _run_info(connection.execute(query, (run_id,)).fetchone())


def layers(connection: sqlite3.Connection, run_id: int) -> list[LayerInfo]:
    rows = connection.execute(
        "SELECT name, type, depth, num_params FROM layers WHERE run_id = ? ORDER BY position",
        (run_id,),
    ).fetchall()
    return [LayerInfo(*row) for row in rows]


def metrics(connection: sqlite3.Connection, run_id: int, layer: str | None, kind: str) -> list[str]:
    query = "SELECT DISTINCT metric FROM series WHERE run_id = ? AND kind = ?"
    parameters: tuple[Any, ...] = (run_id, kind)
    if layer is not None:
        query += " AND layer = ?"
        parameters += (layer,)
    return [row[0] for row in connection.execute(query + " ORDER BY metric", parameters)]


def series_layers(
    connection: sqlite3.Connection, run_id: int, metric: str | None, kind: str
) -> list[str]:
    query = "SELECT DISTINCT layer FROM series WHERE run_id = ? AND kind = ?"
    parameters: tuple[Any, ...] = (run_id, kind)
    if metric is not None:
        query += " AND metric = ?"
        parameters += (metric,)
    return [row[0] for row in connection.execute(query + " ORDER BY layer", parameters)]


def _series_id(
    connection: sqlite3.Connection, run_id: int, kind: str, layer: str, metric: str
) -> int | None:
    row = connection.execute(
        "SELECT series_id FROM series WHERE run_id=? AND kind=? AND layer=? AND metric=?",
        (run_id, kind, layer, metric),
    ).fetchone()
    return None if row is None else row[0]


def series(
    connection: sqlite3.Connection, run_id: int, layer: str, metric: str, start: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(steps int64, values float64) sorted by step, only steps >= ``start`` when given (an
    incremental read of a live run: one range scan of the clustered key); NaN comes back from
    SQL NULL."""
    series_id = _series_id(connection, run_id, "scalar", layer, metric)
    rows = (
        []
        if series_id is None
        else connection.execute(
            "SELECT step, value FROM scalars WHERE series_id = ? AND step >= ? ORDER BY step",
            (series_id, -(2**63) if start is None else int(start)),
        ).fetchall()
    )
    steps = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
    values = np.array([row[1] for row in rows], dtype=np.float64).reshape(len(rows))
    return steps, values


def latest_scalars(
    connection: sqlite3.Connection, run_id: int, metrics: Sequence[str] | None = None
) -> dict[tuple[str, str], tuple[int, float]]:
    """{(layer, metric): (step, value)} of each scalar series' last recorded step, for every
    metric or only ``metrics``: one index seek per series, however long the run."""
    query = (
        "SELECT s.layer, s.metric, c.step, c.value FROM series AS s "
        "JOIN scalars AS c ON c.series_id = s.series_id "
        "WHERE s.run_id = ? AND s.kind = 'scalar' "
        "AND c.step = (SELECT max(step) FROM scalars WHERE series_id = s.series_id)"
    )
    parameters: list[Any] = [run_id]
    if metrics is not None:
        names = list(metrics)
        if not names:
            return {}
        query += f" AND s.metric IN ({', '.join('?' * len(names))})"
        parameters += names
    return {
        (layer, metric): (step, float("nan") if value is None else value)
        for layer, metric, step, value in connection.execute(query, parameters)
    }


def histograms(
    connection: sqlite3.Connection, run_id: int, layer: str, metric: str
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    series_id = _series_id(connection, run_id, "histogram", layer, metric)
    if series_id is None:
        return []
    rows = connection.execute(
        "SELECT step, edges, edges_dtype, counts, counts_dtype FROM histograms "
        "WHERE series_id = ? ORDER BY step",
        (series_id,),
    )
    return [(step, *decode_histogram(*blobs)) for step, *blobs in rows]


def findings(connection: sqlite3.Connection, run_id: int) -> list[dict[str, Any]]:
    rows = connection.execute(
        f"SELECT {', '.join(FINDING_FIELDS)} FROM findings WHERE run_id = ? ORDER BY finding_id",
        (run_id,),
    )
    return [dict(zip(FINDING_FIELDS, row)) for row in rows]
