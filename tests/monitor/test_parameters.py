"""The parameter probe's kernels: the CPU C kernels ("auto", fused weight snapshot and update,
Adam sums) give the eager statistics on every dtype and layout they take or hand back."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import vitalstats as vs
from vitalstats.monitor import MonitorConfig
from vitalstats.stats import native

pytestmark = pytest.mark.skipif(not native.status()[0], reason="the C kernels cannot be built")


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 5),
    )  # fmt: skip


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 40_000 // 12), nn.Tanh(), nn.Linear(40_000 // 12, 3))


def _run(base: nn.Module, kernels: str, make_input, steps: int = 5) -> dict:
    model = copy.deepcopy(base)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    monitor = vs.Monitor(model, optimizer=opt, config=MonitorConfig.everything(kernels=kernels))
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = make_input(generator)
        loss = nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss=loss)
    monitor.flush()
    scalars: dict = {}
    histograms: dict = {}
    for metrics in monitor.history:
        scalars.update({(metrics.step, *k): v for k, v in metrics.scalars.items()})
        histograms.update({(metrics.step, *k): v for k, v in metrics.histograms.items()})
    monitor.close()
    return {"scalars": scalars, "histograms": histograms}


def _assert_same(fused: dict, eager: dict, rel: float) -> None:
    compared = 0
    for key, value in eager["scalars"].items():
        if key[2] == "steps_per_second" or not math.isfinite(value):
            continue
        assert fused["scalars"][key] == pytest.approx(value, rel=rel, abs=1e-7), key
        compared += 1
    assert compared > 50
    for key, counts in eager["histograms"].items():  # a value on a bin edge may move
        assert abs(int(fused["histograms"][key].sum()) - int(counts.sum())) == 0, key
        assert abs(fused["histograms"][key] - counts).sum() <= 4, key


@pytest.mark.parametrize(
    ("dtype", "memory_format"),
    [(torch.float32, torch.contiguous_format), (torch.float32, torch.channels_last),
     (torch.float64, torch.contiguous_format), (torch.bfloat16, torch.contiguous_format)],
)  # fmt: skip
def test_auto_kernels_give_the_eager_statistics_on_a_cnn(dtype, memory_format):
    torch.manual_seed(0)
    base = _cnn().to(dtype=dtype, memory_format=memory_format)

    def make_input(g):
        x = torch.randn(4, 3, 8, 8, generator=g).to(dtype=dtype, memory_format=memory_format)
        return x, torch.randint(0, 5, (4,), generator=g)

    rel = 2e-2 if dtype == torch.bfloat16 else 1e-4  # bf16: the update itself is rounded
    _assert_same(_run(base, "auto", make_input), _run(base, "eager", make_input), rel)


def test_auto_kernels_give_the_eager_statistics_above_the_parallel_grain():
    torch.manual_seed(0)
    base = _mlp()  # weights of 40k values: one C call for all, the shift proposed each step

    def make_input(g):
        return torch.randn(16, 12, generator=g), torch.randint(0, 3, (16,), generator=g)

    _assert_same(_run(base, "auto", make_input), _run(base, "eager", make_input), 1e-4)
