"""Mixed precision: GradScaler steps (unscaled gradients, skipped steps) and autocast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vitalstats as vs
from tests.monitor.helpers import batches, codes, everything, mlp
from vitalstats.monitor import MonitorConfig


def _train_with_scaler(scaler, steps, config, record=None, dtype=torch.float16):
    model = mlp((8, 32, 32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = vs.Monitor(model, optimizer=opt, config=config, scaler=scaler)
    for x, y in batches(steps):
        with torch.autocast("cpu", dtype=dtype):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        if record is not None:
            finite = all(torch.isfinite(p.grad).all() for p in model.parameters())
            norm = model[0].weight.grad.double().norm().item()
            record.append(norm if finite else None)  # the scaler skips any inf/NaN step
        scaler.step(opt)
        scaler.update()
        monitor.step(loss=loss)
    return monitor


def test_gradient_statistics_are_of_unscaled_gradients_and_skips_are_recorded():
    expected: list[float | None] = []
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**22)  # overflows fp16 at first
    monitor = _train_with_scaler(scaler, 20, everything(flush_every=100), record=expected)
    history = monitor.flush()
    skipped = [m.scalars[("", "optimizer_step_skipped")] for m in history]
    assert skipped == [0.0 if e is not None else 1.0 for e in expected]
    assert 0 < sum(skipped) < len(skipped)  # some overflow steps, then it trains
    for m, want in zip(history, expected):
        got = m.scalars.get(("0.weight", "grad_norm"))
        if want is None:
            assert got is None  # a skipped step has no gradient statistics
        else:
            assert got == pytest.approx(want, rel=1e-5)
    assert history[-1].scalars[("", "amp_scale")] < 2.0**22  # the scale it settled at
    assert "NONFINITE_GRAD" not in codes(monitor.diagnose())
    monitor.close()


def test_a_run_where_most_steps_are_skipped_is_a_finding():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100, growth_interval=1)
    config = MonitorConfig(thresholds=vs.monitor.Thresholds(amp_calibration_steps=5))
    monitor = _train_with_scaler(scaler, 40, config)
    found = codes(monitor.diagnose())
    monitor.close()
    assert "AMP_STEPS_SKIPPED" in found and "NONFINITE_GRAD" not in found


def test_a_scaler_that_calibrates_quickly_is_silent():
    scaler = torch.amp.GradScaler("cpu")
    monitor = _train_with_scaler(scaler, 60, MonitorConfig())
    assert "AMP_STEPS_SKIPPED" not in codes(monitor.diagnose())
    monitor.close()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_activation_statistics_are_accumulated_in_float32(dtype):
    model = mlp((8, 64, 4))
    monitor = vs.Monitor(model, config=everything())
    x = torch.randn(256, 8) * 30 + 500  # far from zero: low-precision sums would cancel
    with torch.autocast("cpu", dtype=dtype):
        out = model[0](x)
    assert out.dtype == dtype
    with torch.autocast("cpu", dtype=dtype):
        model(x).float().sum().backward()
    monitor.step()
    [m] = monitor.flush()
    values = out.double()
    assert m.scalars[("0", "act_mean")] == pytest.approx(values.mean().item(), rel=1e-5)
    assert m.scalars[("0", "act_std")] == pytest.approx(values.std(correction=0).item(), rel=1e-4)
    monitor.close()
