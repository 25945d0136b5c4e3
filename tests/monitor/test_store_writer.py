"""The monitor writes the contract's metric names, histograms, findings and metadata."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

import vitalstats as vs
from tests.helpers.store import committing_threads
from tests.monitor.helpers import batches, everything, mlp, train

CONTRACT_METRICS = set(vs.monitor.METRICS)


def _bn_tanh_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16, bias=False),
        nn.BatchNorm1d(16),
        nn.Tanh(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


@pytest.fixture()
def written_run(tmp_path):
    path = tmp_path / "runs" / "exp.sqlite"
    model = _bn_tanh_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = vs.Monitor(
        model,
        optimizer=opt,
        store=path,
        run_name="exp1",
        run_config={"seed": 0},
        config=everything(flush_every=4),
    )
    train(model, opt, monitor, batches(10))
    model.eval()
    with monitor.evaluating() as phase, torch.no_grad():
        phase.add_loss(0.5)
    with torch.no_grad():  # provokes BN_TRAIN_IN_EVAL for the findings table
        model.train()
        model(torch.randn(8, 8))
    monitor.close()
    return path, list(monitor.history), model


def test_every_metric_written_is_a_contract_name(written_run):
    path, _, _ = written_run
    with vs.RunStore(path) as store:
        run = store.runs()[0]
        written = set(store.metrics(run.run_id))
        assert written <= CONTRACT_METRICS, written - CONTRACT_METRICS
        assert {
            "loss",
            "act_std",
            "grad_norm",
            "adam_step_rms",
            "bn_mean_drift",
            "update_to_data_log10",
            "eval_loss",
        } <= written


def test_series_equal_the_monitor_history(written_run):
    path, history, _ = written_run
    with vs.RunStore(path) as store:
        steps, values = store.series("exp1", "", "loss")
        expected = {m.step: m.scalars[("", "loss")] for m in history if ("", "loss") in m.scalars}
        assert steps.tolist() == list(range(10))
        np.testing.assert_allclose(values, [expected[s] for s in steps.tolist()])
        steps, values = store.series("exp1", "3", "act_std")
        assert steps.tolist() == list(range(10)) and np.isfinite(values).all()
        steps, _ = store.series("exp1", "", "eval_loss")
        assert steps.tolist() == [9]


def test_histograms_have_fixed_edges_and_count_the_sample(written_run):
    path, _, _ = written_run
    with vs.RunStore(path) as store:
        hists = store.histograms("exp1", "2", "act_hist")
        assert len(hists) == 10
        _step, edges, counts = hists[0]
        np.testing.assert_allclose(edges, np.linspace(-5, 5, 65))
        assert counts.sum() == 32 * 16  # every tanh output of the batch
        _, grad_edges, grad_counts = store.histograms("exp1", "0.weight", "grad_hist")[0]
        np.testing.assert_allclose(grad_edges, np.linspace(-12, 2, 65))
        assert grad_counts.sum() == 16 * 8


def test_findings_layers_and_metadata_are_recorded(written_run):
    path, _, _model = written_run
    with vs.RunStore(path) as store:
        run = store.runs()[0]
        assert run.status == "finished" and run.name == "exp1"
        assert run.config["optimizer"]["class"] == "Adam"
        assert run.config["optimizer"]["param_groups"][0]["lr"] == 1e-3
        assert run.config["torch_version"] == torch.__version__
        assert run.config["user"] == {"seed": 0}
        layers = store.layers("exp1")
        assert [layer.name for layer in layers] == ["0", "1", "2", "3", "4", "5"]
        assert layers[0].num_params == 16 * 8 and layers[1].type == "BatchNorm1d"
        findings = store.findings("exp1")
        assert {f["code"] for f in findings} == {"BN_TRAIN_IN_EVAL"}


def test_report_is_written_from_the_store(tmp_path):
    pytest.importorskip("matplotlib")
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = vs.Monitor(model, optimizer=opt, store=tmp_path / "r.sqlite")
    train(model, opt, monitor, batches(3))
    out = vs.report.write_report(monitor, tmp_path / "report.html")
    monitor.close()
    assert out.exists() and out.stat().st_size > 1000


def test_report_without_a_store_says_how_to_get_one():
    monitor = vs.Monitor(mlp())
    with pytest.raises(ValueError, match="store="):
        vs.report.write_report(monitor, "x.html")


def test_flushes_commit_on_the_stores_thread_and_sync_store_waits(tmp_path, monkeypatch):
    """A monitor flush hands its SQLite commit to the store's thread (the training step does
    not wait for it); sync_store() commits on the caller's thread, and a fresh reader then
    sees every flushed step."""
    store = vs.RunStore(tmp_path / "r.sqlite", flush_interval=3600)
    committers = committing_threads(store, monkeypatch)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = vs.Monitor(model, optimizer=opt, store=store, config=everything(flush_every=2))
    train(model, opt, monitor, batches(4))
    deadline = time.monotonic() + 10
    while not committers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert committers and set(committers) == {"vitalstats-store-flusher"}
    train(model, opt, monitor, batches(2))
    monitor.sync_store()
    with vs.RunStore(tmp_path / "r.sqlite", readonly=True) as reader:
        steps, _ = reader.series(monitor.run_id, "", "loss")
    assert steps.tolist() == list(range(6))
    monitor.close()
    store.close()


def test_a_failing_store_warns_once_training_goes_on_and_nothing_is_lost(tmp_path, monkeypatch):
    """A commit that fails (here: disk full, in the store's thread) never raises into the
    training step: one warning, and the rows are committed once the store works again."""
    import sqlite3
    import warnings

    store = vs.RunStore(tmp_path / "r.sqlite", flush_interval=3600)
    write = store._writer._write
    broken = {"on": True}

    def failing(*args, **kwargs):
        if broken["on"]:
            raise sqlite3.OperationalError("database or disk is full")
        return write(*args, **kwargs)

    monkeypatch.setattr(store._writer, "_write", failing)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = vs.Monitor(model, optimizer=opt, store=store, config=everything(flush_every=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, opt, monitor, batches(8))  # 4 flushes, every commit fails
        for _ in range(100):  # the thread's failure surfaces at a later flush
            if any("could not be written" in str(w.message) for w in caught):
                break
            time.sleep(0.01)
            train(model, opt, monitor, batches(2))
    messages = [str(w.message) for w in caught if "could not be written" in str(w.message)]
    assert len(messages) == 1 and "disk is full" in messages[0] and "run store" in messages[0]
    broken["on"] = False
    steps, run = monitor.step_index, monitor.run_id
    for _ in range(3):  # a commit that failed before the fix is raised once, by the next call
        try:
            monitor.sync_store()
            break
        except sqlite3.OperationalError:
            pass
    monitor.close()
    with vs.RunStore(tmp_path / "r.sqlite", readonly=True) as reader:
        recorded, _ = reader.series(run, "", "loss")
    assert recorded.tolist() == list(range(steps))
    store.close()
