"""Opening files: fresh stores get the documented schema; foreign, newer or missing files fail
with one clear line."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

import vitalstats as vs
from vitalstats.store import SCHEMA_VERSION, StoreError
from vitalstats.store.schema import APPLICATION_ID

DOCUMENTED_TABLES = {"meta", "runs", "layers", "series", "scalars", "histograms", "findings"}


def _raw(path):
    return sqlite3.connect(path)


def test_a_new_store_has_the_documented_tables_version_and_wal_mode(tmp_path):
    path = tmp_path / "run.sqlite"
    vs.RunStore(path).close()
    with _raw(path) as raw:
        tables = {
            row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert tables == DOCUMENTED_TABLES
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1
        assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        meta = dict(raw.execute("SELECT key, value FROM meta"))
        assert meta["schema_version"] == str(SCHEMA_VERSION)
        assert meta["created_by_vitalstats"] == f'"{vs.__version__}"'


def test_indices_serve_the_report_read_patterns(tmp_path):
    """series() looks up (run, kind, layer, metric) then scans (series, step) in step order."""
    path = tmp_path / "run.sqlite"
    store = vs.RunStore(path)
    run = store.start_run()
    store.add_scalars(run, 0, [("a", "m", 1.0)])
    store.close()
    with _raw(path) as raw:
        plan = " ".join(
            str(row)
            for row in raw.execute(
                "EXPLAIN QUERY PLAN SELECT step, value FROM scalars WHERE series_id = 1 "
                "ORDER BY step"
            )
        )
        assert "USING PRIMARY KEY" in plan and "TEMP B-TREE" not in plan
        plan = " ".join(
            str(row)
            for row in raw.execute(
                "EXPLAIN QUERY PLAN SELECT series_id FROM series WHERE run_id=1 AND "
                "kind='scalar' AND layer='a' AND metric='m'"
            )
        )
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan


def test_reopening_keeps_runs_and_does_not_recreate_the_schema(tmp_path):
    path = tmp_path / "run.sqlite"
    with vs.RunStore(path) as store:
        run = store.start_run("first")
        store.add_scalars(run, 3, [("", "loss", 0.5)])
    with vs.RunStore(path) as store:
        assert [info.name for info in store.runs()] == ["first"]
        assert store.series("first", "", "loss")[1].tolist() == [0.5]


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_newer_schema_is_refused_with_one_line(tmp_path):
    path = tmp_path / "future.sqlite"
    vs.RunStore(path).close()
    with _raw(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for readonly in (False, True):
        with pytest.raises(StoreError) as error:
            vs.RunStore(path, readonly=readonly)
        message = _one_line(error)
        assert f"v{SCHEMA_VERSION + 1}" in message and "pip install -U vitalstats" in message


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("these are my notes, not a database\n")
    with pytest.raises(StoreError) as error:
        vs.RunStore(path)
    assert "not a SQLite file" in _one_line(error)
    assert path.read_text() == "these are my notes, not a database\n"  # left untouched


def test_a_foreign_sqlite_database_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    with _raw(path) as raw:
        raw.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(StoreError) as error:
        vs.RunStore(path)
    assert "not a vitalstats run store" in _one_line(error)


def test_a_reader_needs_an_existing_store(tmp_path):
    path = tmp_path / "missing.sqlite"
    with pytest.raises(StoreError) as error:
        vs.RunStore(path, readonly=True)
    assert "no run store at" in _one_line(error)
    assert not path.exists()  # a reader never creates a file
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(StoreError, match="empty SQLite file"):
        vs.RunStore(empty, readonly=True)


def test_bad_paths_name_the_problem(tmp_path):
    with pytest.raises(StoreError, match="is a directory"):
        vs.RunStore(tmp_path)
    with pytest.raises(StoreError, match="does not exist"):
        vs.RunStore(tmp_path / "no" / "such" / "dir.sqlite")


def test_an_empty_file_becomes_a_store(tmp_path):
    path = tmp_path / "touched.sqlite"
    path.touch()
    with vs.RunStore(path) as store:
        assert store.runs() == []


def test_concurrent_creation_of_one_file_yields_one_schema(tmp_path):
    path = tmp_path / "race.sqlite"
    errors: list[BaseException] = []

    def open_and_start(index: int) -> None:
        try:
            with vs.RunStore(path) as store:
                store.start_run(f"run{index}")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_and_start, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with vs.RunStore(path, readonly=True) as store:
        assert sorted(info.name for info in store.runs()) == ["run0", "run1", "run2", "run3"]


def test_docs_store_md_documents_every_table_and_column(tmp_path):
    """The schema table in docs/store.md names every column SQLite reports."""
    docs = (Path(__file__).parents[2] / "docs" / "store.md").read_text()
    schema_section = docs[docs.index("## Schema") : docs.index("### Versions")]
    path = tmp_path / "run.sqlite"
    vs.RunStore(path).close()
    with _raw(path) as raw:
        for table in DOCUMENTED_TABLES:
            assert f"| `{table}` |" in schema_section, table
            for column in raw.execute(f"PRAGMA table_info({table})"):
                assert f"`{column[1]}`" in schema_section, (table, column[1])
