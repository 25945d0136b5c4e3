"""``vitalstats watch``: a live view of a run another process is still writing."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time

import pytest
from rich.console import Console

from vitalstats.cli import main
from vitalstats.commands.watch import follow
from vitalstats.report.live import RunWatcher
from vitalstats.store import LayerInfo, RunStore

WRITER = """
import sys, time
from vitalstats.store import LayerInfo, RunStore
store = RunStore(sys.argv[1], flush_interval=0)
run = store.start_run("live-elsewhere")
store.add_layers(run, [LayerInfo("fc1", "Linear", 1, 12), LayerInfo("act1", "ReLU", 1, 0)])
for step in range(40):
    store.add_scalars(run, step, [("", "loss", 1.0 / (step + 1)), ("", "steps_per_second", 12.5),
        ("", "lr", 0.01), ("fc1", "act_std", 0.5), ("act1", "act_dead_fraction", 0.4),
        ("fc1.weight", "grad_norm", 3.0), ("fc1.bias", "grad_norm", 4.0),
        ("fc1.weight", "update_to_data_log10", -3.0)])
store.add_findings(run, [
    {"code": "GRAD_EXPLODING", "severity": "error", "layer": "", "step": 30,
     "message": "total gradient norm 5e3", "fix": "clip gradients"},
    {"code": "LR_TOO_HIGH", "severity": "error", "layer": "", "step": 20,
     "message": "updates of 1e-1 of the weights", "fix": "lower the lr"}])
store.flush()
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def live_store(tmp_path):
    path = tmp_path / "live.sqlite"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        yield path, writer
    finally:
        writer.kill()
        writer.wait()


def test_once_prints_one_frame_of_a_run_still_being_written(live_store, capsys, monkeypatch):
    path, writer = live_store
    monkeypatch.setenv("COLUMNS", "140")
    assert main(["watch", str(path), "--once"]) == 0
    out = capsys.readouterr().out
    assert writer.poll() is None  # the writer is still running, its run still open
    assert "live-elsewhere" in out and "running" in out
    assert "step 39" in out and "loss 0.025" in out  # 1 / 40 at the last step
    assert "steps/s 12.5" in out and "lr 0.01" in out
    # the story: LR_TOO_HIGH is the root, GRAD_EXPLODING nested under it
    assert out.index("LR_TOO_HIGH") < out.index("explains GRAD_EXPLODING")
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.strip().startswith(("fc1", "act1"))
    }
    assert rows["fc1"][1:] == [
        "Linear",
        "0.5",
        "—",
        "—",
        "5",
        "1.0e-03",
    ]  # grad norm: sqrt(3² + 4²)
    assert rows["act1"][1:] == ["ReLU", "—", "40%", "—", "—", "—"]


def test_a_finished_run_is_watched_too(tmp_path, capsys):
    path = tmp_path / "done.sqlite"
    with RunStore(path) as store:
        run = store.start_run("done")
        for step in range(3):
            store.add_scalars(run, step, [("", "loss", 2.0)])
        store.end_run(run)
    assert main(["watch", str(path)]) == 0  # without --once it stops by itself: nothing changes
    out = capsys.readouterr().out
    assert "finished" in out and "step 2" in out and "no findings so far" in out


def test_follow_redraws_as_the_store_grows_and_stops_when_the_run_ends(tmp_path):
    path = tmp_path / "growing.sqlite"
    writer = RunStore(path, flush_interval=0)
    run = writer.start_run("growing")
    writer.add_layers(run, [LayerInfo("fc", "Linear", 1, 3)])
    writer.add_scalars(run, 0, [("", "loss", 1.0)])
    writer.flush()

    def train() -> None:
        for step in range(1, 6):
            time.sleep(0.05)
            writer.add_scalars(
                run, step, [("", "loss", 1.0 / (step + 1)), ("fc.weight", "grad_norm", 0.5)]
            )
            writer.flush()
        writer.end_run(run)

    output = io.StringIO()
    console = Console(file=output, width=120, force_terminal=False)
    trainer = threading.Thread(target=train)
    with RunStore(path, readonly=True) as reader:
        watcher = RunWatcher(reader)
        trainer.start()
        assert follow(watcher, console, interval=0.02) == 0
    trainer.join()
    writer.close()
    text = output.getvalue()
    assert "step 5" in text and "run 'growing' is finished" in text


def test_incremental_reads_see_every_step_once(tmp_path):
    path = tmp_path / "steps.sqlite"
    writer = RunStore(path, flush_interval=0)
    run = writer.start_run("steps")
    with RunStore(path, readonly=True) as reader:
        watcher = RunWatcher(reader, "steps")
        for chunk in range(3):
            writer.add_scalars(run, chunk * 2, [("", "loss", float(chunk * 2))])
            writer.add_scalars(run, chunk * 2 + 1, [("", "loss", float(chunk * 2 + 1))])
            writer.flush()
            snapshot = watcher.read()
        assert snapshot.loss_steps.tolist() == [0, 1, 2, 3, 4, 5]
        assert snapshot.loss_values.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    writer.close()


def test_missing_store_unknown_run_and_empty_store_are_one_line_errors(tmp_path, capsys):
    assert main(["watch", str(tmp_path / "nope.sqlite"), "--once"]) == 2
    assert "no run store at" in capsys.readouterr().err
    empty = tmp_path / "empty.sqlite"
    RunStore(empty).close()
    assert main(["watch", str(empty), "--once"]) == 2
    assert "has no runs yet" in capsys.readouterr().err
    with RunStore(empty) as store:
        store.start_run("only")
    assert main(["watch", str(empty), "--run", "ghost", "--once"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run 'ghost'" in err[0] and "'only'" in err[0]


def test_without_run_the_live_run_is_chosen_over_newer_finished_ones(tmp_path, capsys, monkeypatch):
    path = tmp_path / "two.sqlite"
    writer = RunStore(path, flush_interval=0)
    live = writer.start_run("still-training")
    writer.add_scalars(live, 0, [("", "loss", 1.0)])
    done = writer.start_run("finished-later")
    writer.end_run(done)
    writer.flush()
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["watch", str(path), "--once"]) == 0
    assert "still-training" in capsys.readouterr().out
    writer.close()
