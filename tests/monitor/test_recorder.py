"""Device accumulation: raw moments, micro-batch merging, one batched copy at flush."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalstats.monitor.recorder import StepAccumulator, gather, raw_moments


def _oracle(x: np.ndarray) -> tuple[float, float, float, float, float]:
    x = x.astype(np.float64)
    return x.size, x.mean(), ((x - x.mean()) ** 2).sum(), x.min(), x.max()


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    shift=st.floats(-100, 100),
    scale=st.floats(1e-2, 1e2),
    seed=st.integers(0, 10_000),
)
def test_micro_batches_merge_to_the_moments_of_their_concatenation(sizes, shift, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    parts = [torch.randn(n, 3, generator=generator) * scale + shift for n in sizes]
    acc = StepAccumulator()
    for part in parts:
        acc.add("layer", "act", raw_moments(part), "moments")
    [values] = gather([acc.close(0)])
    count, mean, m2, low, high, nonfinite = values.device[("layer", "act")]
    n, mean_ref, m2_ref, low_ref, high_ref = _oracle(torch.cat(parts).numpy())
    assert count == n and nonfinite == 0
    assert mean == pytest.approx(mean_ref, rel=1e-6, abs=1e-6 * scale)
    # float32 sums: M2 keeps ~1e-7 * (1 + mean^2 / var) relative precision
    tolerance = 1e-5 * (1 + mean_ref**2 / max(m2_ref / n, 1e-30)) * m2_ref + 1e-12
    assert m2 == pytest.approx(m2_ref, abs=tolerance)
    assert (low, high) == (pytest.approx(low_ref), pytest.approx(high_ref))


def test_nonfinite_values_are_counted():
    x = torch.tensor([1.0, float("nan"), float("inf"), 2.0])
    acc = StepAccumulator()
    acc.add("l", "act", raw_moments(x), "moments")
    [values] = gather([acc.close(0)])
    assert values.device[("l", "act")][5] == 2


def test_per_channel_moments():
    x = torch.randn(5, 3, 4, 4)
    block = raw_moments(x, (0, 2, 3))
    acc = StepAccumulator()
    acc.add("bn", "bn_batch", block, "moments")
    [values] = gather([acc.close(0)])
    count, mean, m2 = values.device[("bn", "bn_batch")][:3]
    x64 = x.double()
    np.testing.assert_allclose(count, 80)
    np.testing.assert_allclose(mean, x64.mean((0, 2, 3)).numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m2 / count, x64.var((0, 2, 3), correction=0).numpy(), rtol=1e-5)


def test_rules_sum_min_max_same_and_host_values():
    acc = StepAccumulator()
    for value in (3.0, 1.0, 2.0):
        t = torch.tensor(value)
        acc.add("a", "sum", t, "sum")
        acc.add("a", "min", t, "min")
        acc.add("a", "max", t, "max")
        acc.add("a", "same", t, "same")
    acc.add_host("", "lr", 0.5)
    record = acc.close(7)
    assert acc.close(8) is None  # closing starts an empty step
    [values] = gather([record])
    assert values.step == 7
    assert {k: float(v) for k, v in values.device.items()} == {
        ("a", "sum"): 6.0,
        ("a", "min"): 1.0,
        ("a", "max"): 3.0,
        ("a", "same"): 3.0,
    }
    assert values.host == {("", "lr"): 0.5}


def test_gather_keeps_steps_apart_and_copies_once(monkeypatch):
    records = []
    for step in range(3):
        acc = StepAccumulator()
        acc.add("l", "x", torch.tensor(float(step)), "same")
        if step == 1:
            acc.add("l", "y", torch.ones(2), "sum")  # a different layout
        records.append(acc.close(step))
    copies = []
    original = torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        copies.append(self.shape)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    out = gather(records)
    assert len(copies) == 1
    assert [float(v.device[("l", "x")]) for v in out] == [0.0, 1.0, 2.0]
    assert out[1].device[("l", "y")].tolist() == [1.0, 1.0]
