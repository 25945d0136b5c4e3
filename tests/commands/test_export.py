"""``vitalstats export --tensorboard``: writes one event directory per run."""

from __future__ import annotations

import pytest

from tests.report.synthetic import make_store
from vitalstats.cli import main

pytest.importorskip("tensorboard", reason="tensorboard is an optional extra")


def test_export_writes_event_files_per_run(tmp_path, capsys):
    store = make_store(tmp_path / "runs.sqlite", runs=2, steps=3)
    assert (
        main(["export", str(store), "--tensorboard", str(tmp_path / "tb"), "--run", "run-1"]) == 0
    )
    out = capsys.readouterr().out
    assert "run-1" in out and "run-0" not in out
    assert list((tmp_path / "tb" / "run-1").glob("events.out.tfevents.*"))
    assert not (tmp_path / "tb" / "run-0").exists()


def test_export_into_a_file_is_one_line(tmp_path, capsys):
    store = make_store(tmp_path / "runs.sqlite", runs=1, steps=2)
    (tmp_path / "file").write_text("x")
    assert main(["export", str(store), "--tensorboard", str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err
