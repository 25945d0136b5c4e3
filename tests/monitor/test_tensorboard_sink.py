"""vs.Monitor(..., tensorboard=DIR): the flushed rows, read back by TensorBoard's own reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vitalstats as vs
from tests.monitor.helpers import batches, everything, mlp, train

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is an optional extra: pip install 'vitalstats[tensorboard]'",
)


def test_monitor_mirrors_scalars_and_histograms_into_tensorboard(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = vs.Monitor(
        model, optimizer=opt, config=everything(flush_every=3), tensorboard=tmp_path / "tb"
    )
    train(model, opt, monitor, batches(6))
    history = list(monitor.history)
    monitor.close()

    events = event_accumulator.EventAccumulator(
        str(tmp_path / "tb"),
        size_guidance={event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0},
    )
    events.Reload()
    losses = [m.scalars[("", "loss")] for m in history if ("", "loss") in m.scalars]
    read = events.Scalars("loss")
    assert [e.step for e in read] == [m.step for m in history if ("", "loss") in m.scalars]
    np.testing.assert_array_equal([e.value for e in read], np.float32(losses))
    assert "act_std/0" in events.Tags()["scalars"]
    assert "act_hist/0" in events.Tags()["histograms"]


def test_no_tensorboard_directory_means_no_files(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with vs.Monitor(model, optimizer=opt) as monitor:
        train(model, opt, monitor, batches(2))
    assert list(tmp_path.iterdir()) == []
