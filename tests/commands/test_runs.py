"""``vitalstats runs``: lists the runs of a store (table and JSON)."""

from __future__ import annotations

import json

from tests.report.synthetic import make_store
from vitalstats.cli import main


def test_runs_json_lists_every_run_with_its_last_step(tmp_path, capsys):
    store = make_store(tmp_path / "runs.sqlite", runs=2, steps=7)
    assert main(["runs", str(store), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["name"], r["status"], r["last_step"], r["findings"]) for r in rows] == [
        (1, "run-0", "finished", 6, 4),
        (2, "run-1", "finished", 6, 4),
    ]


def test_runs_table_shows_names(tmp_path, capsys):
    store = make_store(tmp_path / "runs.sqlite", runs=1, steps=2)
    assert main(["runs", str(store)]) == 0
    out = capsys.readouterr().out
    assert "run-0" in out and "finished" in out


def test_empty_store_says_so(tmp_path, capsys):
    from vitalstats.store import RunStore

    RunStore(tmp_path / "empty.sqlite").close()
    assert main(["runs", str(tmp_path / "empty.sqlite")]) == 0
    assert "no runs yet" in capsys.readouterr().out
