"""Findings reach the user when they are found: logging, on_finding, stop_on."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import vitalstats as vs
from tests.monitor.helpers import batches, mlp
from vitalstats.monitor import MonitorConfig, TrainingStopped


def _dead_model() -> nn.Sequential:
    model = mlp((8, 32, 32, 4))
    nn.init.constant_(model[0].bias, -20.0)  # every unit of layer 1 is dead
    return model


def test_each_new_finding_is_announced_at_the_flush_that_finds_it(caplog):
    model = _dead_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    heard: list[tuple[int, str, str]] = []
    monitor = vs.Monitor(
        model, optimizer=opt, config=MonitorConfig(activations_every=1, flush_every=5),
        on_finding=lambda f: heard.append((monitor.step_index, f.code, f.layer)),
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="vitalstats"):
        for step, (x, y) in enumerate(batches(12)):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss)
            if step == 4:
                assert ("DEAD_RELU", "1") in {(c, layer) for _, c, layer in heard}  # first flush
    monitor.close()
    assert [(c, layer) for _, c, layer in heard].count(("DEAD_RELU", "1")) == 1  # not per flush
    assert heard[0][0] == 5
    records = [
        r for r in caplog.records if r.name == "vitalstats" and "DEAD_RELU 1 " in r.getMessage()
    ]
    assert len(records) == 1 and records[0].levelno == logging.WARNING


def test_stop_on_error_stops_at_the_first_nonfinite_loss_and_keeps_the_run(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    data = list(batches(50))
    data[7][0][:] = float("nan")
    path = tmp_path / "run.sqlite"
    steps = 0
    with (
        pytest.raises(TrainingStopped) as stopped,
        vs.Monitor(model, optimizer=opt, store=path, stop_on="error") as monitor,
    ):
        for x, y in data:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.step(loss=loss)
            steps += 1
    assert steps == 7  # step 7's step() raised: no compute after the NaN
    assert {f.code for f in stopped.value.findings} == {"NONFINITE_INPUT"}
    with vs.RunStore(path) as store:
        [run] = store.runs()
        assert run.status == "interrupted"
        loss_steps, _ = store.series(run.run_id, "", "loss")
        assert loss_steps.tolist() == list(range(8))
        assert [f["code"] for f in store.findings(run.run_id)] == ["NONFINITE_INPUT"]


def test_stop_on_codes_and_bad_codes():
    model = _dead_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    monitor = vs.Monitor(model, optimizer=opt, stop_on={"DEAD_RELU"},
                         config=MonitorConfig(activations_every=1, flush_every=2))  # fmt: skip
    with pytest.raises(TrainingStopped, match="DEAD_RELU"):
        for x, y in batches(10):
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            monitor.step()
    monitor.close()
    with pytest.raises(ValueError, match="unknown codes"):
        vs.Monitor(mlp(), stop_on=["NOT_A_CODE"])
