"""``vitalstats doctor`` end to end with tiny settings: store, report, summary, findings."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the doctor's data sets come with scikit-learn")

from vitalstats.cli import main
from vitalstats.store import RunStore


@pytest.fixture(scope="module")
def doctored(tmp_path_factory):
    directory = tmp_path_factory.mktemp("doctor")
    store, out = directory / "doctor.sqlite", directory / "report.html"
    code = main(["doctor", "--model", "tanh", "--epochs", "1", "--seed", "1",
                 "--store", str(store), "--out", str(out)])  # fmt: skip
    return code, store, out


def test_doctor_exits_zero_and_writes_store_and_report(doctored):
    code, store, out = doctored
    assert code == 0
    assert store.exists() and out.read_text().startswith("<!DOCTYPE html>")


def test_one_finished_run_per_configuration_with_one_epoch_of_steps(doctored):
    _, store, _ = doctored
    with RunStore(store, readonly=True) as reader:
        runs = reader.runs()
        assert [r.name for r in runs] == ["tanh/naive-init", "tanh/no-gain", "tanh/gain-5-3"]
        assert {r.status for r in runs} == {"finished"}
        steps_per_epoch = 1437 // 64  # digits train split, full batches only
        for run in runs:
            steps, losses = reader.series(run.run_id, "", "loss")
            np.testing.assert_array_equal(steps, np.arange(steps_per_epoch))
            assert np.isfinite(losses).all()
            eval_steps, _ = reader.series(run.run_id, "", "eval_loss")
            assert len(eval_steps) == 1


def test_naive_tanh_is_diagnosed_as_saturated_and_the_gained_one_is_not(doctored):
    _, store, _ = doctored
    with RunStore(store, readonly=True) as reader:
        naive = {f["code"] for f in reader.findings("tanh/naive-init")}
        gained = {f["code"] for f in reader.findings("tanh/gain-5-3")}
    assert "ACT_SATURATED" in naive
    assert "ACT_SATURATED" not in gained


def test_report_overlays_every_doctor_run(doctored):
    _, _, out = doctored
    text = out.read_text()
    for name in ("tanh/naive-init", "tanh/no-gain", "tanh/gain-5-3"):
        assert re.search(rf"<td>{re.escape(name)}</td>", text)


def test_terminal_summary_shows_results_and_findings(doctored, capsys):
    # The fixture's output was captured by pytest before this test; run the summary directly.
    from rich.console import Console

    from vitalstats.doctor.summary import print_summary
    from vitalstats.doctor.train import RunResult

    result = RunResult("tanh/x", "lesson", 3, 0.5, 0.6, 0.75, 1.0,
                       ({"code": "ACT_SATURATED", "severity": "warning", "layer": "net.2", "step": 0,
                         "message": "saturated", "fix": "use the gain"},))  # fmt: skip
    console = Console(width=200, force_terminal=False)
    print_summary(console, [result])
    out = capsys.readouterr().out
    assert "tanh/x" in out and "75.0%" in out and "0.6000" in out
    assert "ACT_SATURATED" in out and "fix: use the gain" in out


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["doctor", "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err
    assert main(["doctor", "--store", str(tmp_path / "missing" / "s.sqlite")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["doctor", "--device", "nonsense"]) == 2
    assert "not a torch device" in capsys.readouterr().err
    assert main(["doctor", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    not_a_store = tmp_path / "notes.sqlite"
    not_a_store.write_text("hello")
    assert (
        main(
            [
                "doctor",
                "--model",
                "tanh",
                "--store",
                str(not_a_store),
                "--out",
                str(tmp_path / "r.html"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a SQLite file" in err[0]


def test_a_second_doctor_run_into_the_same_store_gets_suffixed_names(tmp_path):
    from vitalstats.doctor import run_doctor

    store = tmp_path / "twice.sqlite"
    first = run_doctor(("cnn",), epochs=1, store=store, out=None)
    second = run_doctor(("cnn",), epochs=1, store=store, out=tmp_path / "second.html")
    assert first.report is None
    assert [r.name for r in first.runs] == ["cnn/torch-conventions", "cnn/keras-habits"]
    assert [r.name for r in second.runs] == ["cnn/torch-conventions-2", "cnn/keras-habits-2"]
    text = second.report.read_text()
    assert "<td>cnn/keras-habits-2</td>" in text and "<td>cnn/keras-habits</td>" not in text


def test_the_default_store_outlives_the_process_and_is_never_overwritten(tmp_path):
    """`vitalstats doctor` with no --store keeps runs/doctor.sqlite in the working directory:
    after the process exits the store is there and reports again; a second doctor adds its runs
    beside the first ones instead of replacing them."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "vitalstats", "doctor", "--model", "tanh", "--epochs", "1"]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    store = tmp_path / "runs" / "doctor.sqlite"
    assert store.is_file()
    assert f"store:  {Path('runs') / 'doctor.sqlite'}" in first.stdout
    again = subprocess.run([sys.executable, "-m", "vitalstats", "report", str(store), "-o",
                            str(tmp_path / "again.html")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "tanh/gain-5-3" in (tmp_path / "again.html").read_text()

    import os

    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert main(["doctor", "--model", "tanh", "--epochs", "1", "--seed", "2"]) == 0
    finally:
        os.chdir(cwd)
    with RunStore(store, readonly=True) as reader:
        names = [run.name for run in reader.runs()]
    assert names == ["tanh/naive-init", "tanh/no-gain", "tanh/gain-5-3",
                     "tanh/naive-init-2", "tanh/no-gain-2", "tanh/gain-5-3-2"]  # fmt: skip
