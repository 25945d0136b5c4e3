"""The SQLite schema of a run store, and opening a file safely.

A store is one SQLite file in WAL mode. ``PRAGMA application_id`` marks it as a vitalstats
store and ``PRAGMA user_version`` holds the schema version (mirrored in the ``meta`` table).
Opening a file written by a newer schema raises ``StoreError``; an older one is migrated in
place by ``_MIGRATIONS`` (none yet: version 1 is the first). docs/store.md documents every
table and column.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from vitalstats.store.records import StoreError

SCHEMA_VERSION = 1
APPLICATION_ID = 0x56535431  # "VST1"
BUSY_TIMEOUT_MS = 30_000
CACHE_KIB = 32_768  # holds the last page of ~8000 series, so a commit re-reads none
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA_V1 = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE runs (
    run_id      INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL
                CHECK (status IN ('running', 'finished', 'crashed', 'interrupted')),
    started_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    ended_at    REAL,
    config      TEXT NOT NULL,
    environment TEXT NOT NULL
);
CREATE TABLE layers (
    run_id     INTEGER NOT NULL REFERENCES runs (run_id),
    name       TEXT NOT NULL,
    position   INTEGER NOT NULL,
    type       TEXT NOT NULL,
    depth      INTEGER NOT NULL,
    num_params INTEGER NOT NULL,
    PRIMARY KEY (run_id, name)
) WITHOUT ROWID;
CREATE TABLE series (
    series_id INTEGER PRIMARY KEY,
    run_id    INTEGER NOT NULL REFERENCES runs (run_id),
    kind      TEXT NOT NULL CHECK (kind IN ('scalar', 'histogram')),
    layer     TEXT NOT NULL,
    metric    TEXT NOT NULL,
    UNIQUE (run_id, kind, layer, metric)
);
CREATE TABLE scalars (
    series_id INTEGER NOT NULL REFERENCES series (series_id),
    step      INTEGER NOT NULL,
    value     REAL,
    PRIMARY KEY (series_id, step)
) WITHOUT ROWID;
CREATE TABLE histograms (
    series_id    INTEGER NOT NULL REFERENCES series (series_id),
    step         INTEGER NOT NULL,
    edges        BLOB NOT NULL,
    edges_dtype  TEXT NOT NULL,
    counts       BLOB NOT NULL,
    counts_dtype TEXT NOT NULL,
    UNIQUE (series_id, step)
);
CREATE TABLE findings (
    finding_id INTEGER PRIMARY KEY,
    run_id     INTEGER NOT NULL REFERENCES runs (run_id),
    step       INTEGER,
    code       TEXT NOT NULL,
    severity   TEXT NOT NULL,
    layer      TEXT,
    message    TEXT NOT NULL,
    fix        TEXT NOT NULL
);
CREATE INDEX findings_by_run_step ON findings (run_id, step);
"""

# from_version -> SQL that upgrades a store to from_version + 1.
_MIGRATIONS: dict[int, str] = {}


def open_connection(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """Open (and for writers create or migrate) the store at ``path``; autocommit mode."""
    _check_file(path, readonly=readonly)
    try:
        connection = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = _existing_version(connection, path)
        if readonly:
            if version == 0:
                raise StoreError(f"{path} is an empty SQLite file, not a vitalstats run store")
            connection.execute("PRAGMA query_only = ON")
        else:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            if version < SCHEMA_VERSION:
                _create_or_migrate(connection, path)
        return connection
    except sqlite3.DatabaseError as error:
        raise StoreError(f"{path} cannot be opened as a run store: {error}") from None


def _check_file(path: Path, *, readonly: bool) -> None:
    if path.is_dir():
        raise StoreError(f"{path} is a directory; pass a file path such as {path / 'run.sqlite'}")
    if not path.exists():
        if readonly:
            raise StoreError(
                f"no run store at {path}; check the path, or record a run first with "
                f"vs.Monitor(model, store={str(path)!r})"
            )
        if not path.parent.exists():
            raise StoreError(f"cannot create {path}: directory {path.parent} does not exist")
        return
    with open(path, "rb") as file:
        header = file.read(len(_SQLITE_MAGIC))
    if header and header != _SQLITE_MAGIC:
        raise StoreError(f"{path} is not a SQLite file, so not a vitalstats run store")


def _existing_version(connection: sqlite3.Connection, path: Path) -> int:
    """The file's schema version (0 = empty file); StoreError for foreign or newer files."""
    # One statement, so one snapshot: another process may be creating the schema right now.
    application_id, version, tables = connection.execute(
        "SELECT application_id, user_version, (SELECT count(*) FROM sqlite_master) "
        "FROM pragma_application_id(), pragma_user_version()"
    ).fetchone()
    if application_id == 0 and version == 0 and tables == 0:
        return 0
    if application_id != APPLICATION_ID:
        raise StoreError(f"{path} is a SQLite file but not a vitalstats run store")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written with run-store schema v{version}, newer than the v"
            f"{SCHEMA_VERSION} this vitalstats reads; upgrade: pip install -U vitalstats"
        )
    return version


def _create_or_migrate(connection: sqlite3.Connection, path: Path) -> None:
    """Create the schema in an empty file or migrate an old one, in one write transaction."""
    connection.execute("BEGIN IMMEDIATE")  # re-read under the lock: another process may race
    try:
        version = _existing_version(connection, path)
        if version == 0:
            _execute_script(connection, _SCHEMA_V1)
            _write_meta(connection, "created_at", time.time())
            _write_meta(connection, "created_by_vitalstats", _vitalstats_version())
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            version = 1
        while version < SCHEMA_VERSION:
            _execute_script(connection, _MIGRATIONS[version])
            version += 1
        _write_meta(connection, "schema_version", version)
        connection.execute(f"PRAGMA user_version = {version}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _execute_script(connection: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated DDL inside the open transaction (``executescript`` would commit)."""
    for statement in script.split(";"):
        if statement.strip():
            connection.execute(statement)


def _write_meta(connection: sqlite3.Connection, key: str, value: object) -> None:
    connection.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
    )


def _vitalstats_version() -> str:
    from vitalstats import __version__

    return __version__


def environment() -> dict[str, object]:
    """What the store records about the process that starts a run."""
    import platform
    import socket
    import sys
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version: str | None = version("torch")
    except PackageNotFoundError:
        torch_version = None
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "platform": platform.platform(),
        "python_version": sys.version.split()[0],
        "torch_version": torch_version,
        "vitalstats_version": _vitalstats_version(),
    }
