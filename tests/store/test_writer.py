"""Buffered writing under stress: background commits, threads, failed commits, a SIGKILLed
writer, and readers in another process while a run is being written."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import vitalstats as vs
from tests.helpers.store import committing_threads
from tests.store.writer_process import LAYERS, METRICS, expected_value

WRITER = Path(__file__).with_name("writer_process.py")


def _committed_steps(path: Path, layer: str = "", metric: str = "loss") -> list[int]:
    """Read through a raw sqlite3 connection: an oracle independent of RunStore's readers."""
    with sqlite3.connect(path) as raw:
        rows = raw.execute(
            "SELECT step FROM scalars JOIN series USING (series_id) "
            "WHERE layer = ? AND metric = ? ORDER BY step",
            (layer, metric),
        )
        return [row[0] for row in rows]


def test_the_background_thread_commits_without_an_explicit_flush(tmp_path):
    path = tmp_path / "run.sqlite"
    with vs.RunStore(path, flush_interval=0.02) as store:
        run = store.start_run()
        store.add_scalars(run, 0, [("", "loss", 1.0)])
        deadline = time.monotonic() + 10
        while _committed_steps(path) != [0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _committed_steps(path) == [0]


def test_reaching_flush_rows_wakes_the_flusher_early(tmp_path):
    path = tmp_path / "run.sqlite"
    with vs.RunStore(path, flush_interval=3600, flush_rows=10) as store:
        run = store.start_run()
        store.add_scalars(run, 0, [("", "loss", 1.0)] + [("a", f"m{i}", 0.0) for i in range(9)])
        deadline = time.monotonic() + 10
        while _committed_steps(path) != [0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _committed_steps(path) == [0]


def test_flush_without_waiting_hands_the_commit_to_the_flusher(tmp_path, monkeypatch):
    path = tmp_path / "run.sqlite"
    with vs.RunStore(path, flush_interval=3600) as store:
        run = store.start_run()
        store.add_scalars(run, 0, [("", "loss", 1.0)])
        callers = committing_threads(store, monkeypatch)
        store.flush(wait=False)  # returns at once; the thread commits long before 3600 s
        deadline = time.monotonic() + 10
        while _committed_steps(path) != [0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _committed_steps(path) == [0]
        assert callers == ["vitalstats-store-flusher"]
        store.add_scalars(run, 1, [("", "loss", 2.0)])
        assert store.series(run, "", "loss")[0].tolist() == [0, 1]  # reads see their own rows


def test_flush_without_waiting_commits_now_without_a_thread(tmp_path):
    path = tmp_path / "run.sqlite"
    with vs.RunStore(path, flush_interval=0) as store:
        run = store.start_run()
        store.add_scalars(run, 0, [("", "loss", 1.0)])
        store.flush(wait=False)
        assert _committed_steps(path) == [0]


def test_many_threads_adding_while_the_flusher_runs_lose_nothing(tmp_path):
    path = tmp_path / "run.sqlite"
    threads_count, steps = 4, 200
    with vs.RunStore(path, flush_interval=0.001) as store:
        run = store.start_run()

        def add(thread: int) -> None:
            for step in range(steps):
                store.add_scalars(run, step, [(f"t{thread}", "value", float(step * thread))])

        threads = [threading.Thread(target=add, args=(i,)) for i in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for thread in range(threads_count):
            steps_read, values = store.series(run, f"t{thread}", "value")
            assert steps_read.tolist() == list(range(steps))
            assert values.tolist() == [float(step * thread) for step in range(steps)]


def test_a_failed_commit_keeps_its_rows_for_the_next_flush(tmp_path, monkeypatch):
    path = tmp_path / "run.sqlite"
    with vs.RunStore(path, flush_interval=0) as store:
        run = store.start_run()
        store.add_scalars(run, 0, [("", "loss", 1.0)])
        writer = store._writer
        real_write = writer._write

        def fail_once(*args):
            monkeypatch.setattr(writer, "_write", real_write)
            args[0].execute("INSERT INTO findings (run_id, code, severity, message, fix) "
                            "VALUES (1, 'half', 'x', 'written before the failure', '')")  # fmt: skip
            raise sqlite3.OperationalError("disk I/O error (simulated)")

        monkeypatch.setattr(writer, "_write", fail_once)
        with pytest.raises(sqlite3.OperationalError, match="simulated"):
            store.flush()
        assert store.findings(run) == []  # the half-written transaction was rolled back
        store.add_scalars(run, 1, [("", "loss", 2.0)])
        store.flush()
        assert store.series(run, "", "loss")[1].tolist() == [1.0, 2.0]


def test_a_background_failure_is_raised_in_the_callers_next_call(tmp_path, monkeypatch):
    path = tmp_path / "run.sqlite"
    store = vs.RunStore(path, flush_interval=0.01)
    run = store.start_run()
    writer = store._writer
    real_write = writer._write

    def fail(*args):
        raise sqlite3.OperationalError("database or disk is full (simulated)")

    monkeypatch.setattr(writer, "_write", fail)
    store.add_scalars(run, 0, [("", "loss", 1.0)])
    deadline = time.monotonic() + 10
    while writer._background_error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        store.add_scalars(run, 1, [("", "loss", 2.0)])
    monkeypatch.setattr(writer, "_write", real_write)
    store.close()  # the failed commit's rows and the raising call's are buffered: written
    with vs.RunStore(path, readonly=True) as reader:
        assert reader.series(run, "", "loss")[0].tolist() == [0, 1]


def _start_writer(path: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(path), *options],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )


@pytest.mark.slow
def test_a_sigkilled_writer_loses_only_the_unflushed_window(tmp_path):
    path = tmp_path / "run.sqlite"
    process = _start_writer(path, "--steps", "1000000000", "--flush-every", "3")
    flushed: dict[int, float] = {}
    try:
        assert process.stdout.readline().startswith("started")
        while len(flushed) < 12:
            kind, step, loss = process.stdout.readline().split()
            assert kind == "flushed"
            flushed[int(step)] = float(loss)
        process.send_signal(signal.SIGKILL)  # mid-run, often mid-commit
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with vs.RunStore(path, readonly=True) as store:
        info = store.run("training")
        assert info.status == "running"  # killed: no end_run ever came
        steps, losses = store.series("training", "", "loss")
        last_flushed = max(flushed)
        assert steps.tolist()[: last_flushed + 1] == list(range(last_flushed + 1))
        for step, loss in flushed.items():
            assert losses[step] == loss
        # Atomic per add_scalars call: every committed step has all of its rows.
        for layer in (0, LAYERS - 1):
            for metric in (0, METRICS - 1):
                layer_steps, values = store.series(info.run_id, f"layer{layer}", f"metric{metric}")
                assert layer_steps.tolist() == steps.tolist()
                want = [expected_value(int(s), layer, metric) for s in layer_steps]
                assert values.tolist() == want


@pytest.mark.slow
def test_a_reader_process_view_grows_consistently_while_a_run_is_written(tmp_path):
    path = tmp_path / "run.sqlite"
    total_steps = 100
    process = _start_writer(
        path, "--steps", str(total_steps), "--flush-every", "1", "--layers", "10", "--no-torch"
    )
    try:
        assert process.stdout.readline().startswith("started")
        with vs.RunStore(path, readonly=True) as reader:
            seen: list[int] = []
            while True:
                finished = process.poll() is not None
                steps, values = reader.series("training", "layer7", "metric3")
                # Each read is one committed snapshot: steps 0..n-1, all values correct.
                assert steps.tolist() == list(range(len(steps)))
                np.testing.assert_array_equal(values, [expected_value(int(s), 7, 3) for s in steps])
                seen.append(len(steps))
                if finished:
                    break
                time.sleep(0.005)
            assert process.returncode == 0
            assert seen == sorted(seen) and seen[-1] == total_steps
            assert len(set(seen)) > 2  # it really read while the writer was writing
            assert reader.run("training").status == "finished"
    finally:
        process.kill()
        process.wait(timeout=30)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_cannot_use_the_parents_connection_and_leaves_it_intact(tmp_path):
    path = tmp_path / "run.sqlite"
    store = vs.RunStore(path, flush_interval=0)
    run = store.start_run()
    store.add_scalars(run, 0, [("", "loss", 1.0)])  # buffered in the parent
    child = os.fork()
    if child == 0:  # the child: refused with a clear error; its finaliser must do nothing
        code = 1
        try:
            store.add_scalars(run, 1, [("", "loss", 2.0)])
            code = 3
        except RuntimeError as error:
            code = 0 if "forked process" in str(error) else 4
            store.close()  # what the atexit finaliser runs: a no-op outside the owner
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.close()
    with vs.RunStore(path, readonly=True) as reader:
        assert reader.series(run, "", "loss")[1].tolist() == [1.0]


def test_a_store_cannot_be_pickled(tmp_path):
    import pickle

    with (
        vs.RunStore(tmp_path / "run.sqlite") as store,
        pytest.raises(TypeError, match=r"cannot be pickled.*open vs.RunStore\(path\)"),
    ):
        pickle.dumps(store)


def test_two_processes_write_different_runs_into_one_file(tmp_path):
    path = tmp_path / "shared.sqlite"
    options = ("--steps", "60", "--flush-every", "2", "--layers", "5", "--no-torch")
    writers = [_start_writer(path, *options) for _ in range(2)]
    try:
        for process in writers:
            process.communicate(timeout=120)
            assert process.returncode == 0
    finally:
        for process in writers:
            process.kill()
            process.wait(timeout=30)
    with vs.RunStore(path, readonly=True) as store:
        runs = store.runs()
        assert sorted(info.name for info in runs) == ["training", "training-2"]
        for info in runs:
            assert info.status == "finished"
            steps, values = store.series(info.run_id, "layer4", "metric9")
            assert steps.tolist() == list(range(60))
            assert values.tolist() == [expected_value(step, 4, 9) for step in range(60)]
