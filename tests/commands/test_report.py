"""``vitalstats report``: writes the HTML report; options reach write_report."""

from __future__ import annotations

import re

from tests.report.synthetic import make_store
from vitalstats.cli import main


def test_report_writes_the_chosen_runs(tmp_path, capsys):
    store = make_store(tmp_path / "runs.sqlite", runs=2, steps=25)
    out = tmp_path / "r.html"
    assert (
        main(["report", str(store), "-o", str(out), "--run", "run-1", "--histogram-steps", "11"])
        == 0
    )
    assert f"wrote {out}" in capsys.readouterr().out
    text = out.read_text()
    assert re.findall(r"(run-\d): activations at step (\d+)</figcaption>", text) == [
        ("run-1", "10")
    ]


def test_report_into_a_missing_directory_is_one_line(tmp_path, capsys):
    store = make_store(tmp_path / "runs.sqlite", runs=1, steps=2)
    assert main(["report", str(store), "-o", str(tmp_path / "no" / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitalstats report: error: --out") and "\n" not in err


def test_bad_histogram_steps_are_a_usage_error(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        main(["report", "x.sqlite", "--histogram-steps", "a,b"])
    assert exit_info.value.code == 2
    assert "expected integers" in capsys.readouterr().err


def test_report_into_a_directory_is_one_line(tmp_path, capsys):
    store = make_store(tmp_path / "runs.sqlite", runs=1, steps=2)
    assert main(["report", str(store), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a directory" in err and "\n" not in err
