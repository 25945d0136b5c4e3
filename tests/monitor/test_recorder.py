"""Device accumulation: exact summary merges over micro-batches, one batched copy at flush."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalstats.monitor.metrics import finalize
from vitalstats.monitor.recorder import StepAccumulator, gather
from vitalstats.stats.summary import raw_summary


def _oracle(x: np.ndarray) -> tuple[float, float, float, float, float]:
    x = x.astype(np.float64)
    return x.size, x.mean(), ((x - x.mean()) ** 2).sum(), x.min(), x.max()


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    shift=st.floats(-1e4, 1e4),
    scale=st.floats(1e-3, 1e2),
    seed=st.integers(0, 10_000),
)
def test_micro_batches_merge_to_the_summary_of_their_concatenation(sizes, shift, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    parts = [torch.randn(n, 3, generator=generator) * scale + shift for n in sizes]
    acc = StepAccumulator()
    for part in parts:
        acc.add("layer", "act", raw_summary(part), "summary")
    [values] = gather([acc.close(0)])
    count, mean, m2, low, high, nonfinite = finalize(values.device[("layer", "act")])
    n, mean_ref, m2_ref, low_ref, high_ref = _oracle(torch.cat(parts).numpy())
    assert count == n and nonfinite == 0
    assert mean == pytest.approx(mean_ref, rel=1e-6, abs=1e-6 * scale)
    # centred sums and Chan merges: float32 precision whatever mean^2 / var is
    assert m2 == pytest.approx(m2_ref, rel=1e-4, abs=1e-30)
    assert (low, high) == (pytest.approx(low_ref), pytest.approx(high_ref))


def test_nonfinite_values_are_counted():
    x = torch.tensor([1.0, float("nan"), float("inf"), 2.0])
    acc = StepAccumulator()
    acc.add("l", "act", raw_summary(x), "summary")
    [values] = gather([acc.close(0)])
    assert finalize(values.device[("l", "act")])[5] == 2


def test_rules_within_a_step_and_row_labels():
    acc = StepAccumulator()
    acc.add("", "count", torch.tensor(2.0), "sum")
    acc.add("", "count", torch.tensor(3.0), "sum")
    acc.add("", "first", torch.tensor(1.0), "same")
    acc.add("", "first", torch.tensor(9.0), "same")
    acc.add("", "low", torch.tensor([1.0, 5.0]), "min")
    acc.add("", "low", torch.tensor([2.0, 4.0]), "min")
    acc.add("", "per_sample", torch.ones(8), "same")
    acc.add("", "per_sample", torch.zeros(3), "same")  # a smaller last micro-batch is ignored
    acc.add("", "rows", torch.zeros(2, 7), "summary", labels=("a.weight", "a.bias"))
    acc.add_host("", "lr", 0.1)
    [values] = gather([acc.close(7)])
    assert values.step == 7 and values.host[("", "lr")] == 0.1
    assert values.device[("", "count")] == 5 and values.device[("", "first")] == 1
    np.testing.assert_array_equal(values.device[("", "low")], [1.0, 4.0])
    np.testing.assert_array_equal(values.device[("", "per_sample")], np.ones(8))
    assert values.labels[("", "rows")] == ("a.weight", "a.bias")


def test_a_window_of_steps_is_copied_in_one_go_and_empty_steps_vanish():
    acc = StepAccumulator()
    assert acc.close(0) is None
    records = []
    for step in range(3):
        acc.add("l", "v", torch.tensor([float(step), 1.0]), "sum")
        records.append(acc.close(step))
    values = gather(records)
    assert [v.step for v in values] == [0, 1, 2]
    assert [v.device[("l", "v")].tolist() for v in values] == [[0, 1], [1, 1], [2, 1]]


def test_a_closed_step_keeps_one_packed_tensor_until_the_flush():
    """Dozens of small tensors per step kept until the flush fragment the CPU heap (every
    later step then faults in fresh pages); a closed step holds one tensor."""
    acc = StepAccumulator()
    for layer in range(40):
        acc.add(str(layer), "nonfinite", torch.tensor(float(layer)), "sum")
    acc.add("", "counts", torch.tensor([3, 4], dtype=torch.int64), "sum")
    record = acc.close(7)
    assert len(record.parts) == 1 and record.parts[0].numel() == 42
    values = gather([record])[0].device
    assert values[("39", "nonfinite")] == 39.0 and values[("", "counts")].tolist() == [3, 4]


def test_batched_histograms_equal_histc_row_by_row():
    from vitalstats.monitor.probes import histograms

    g = torch.Generator().manual_seed(0)
    samples = [torch.randn(500, generator=g) * 3, torch.randn(7, generator=g), torch.zeros(0)]
    samples[0][:5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 5.0, -5.0])
    counts = histograms(samples, 16, (-5.0, 5.0))
    for sample, row in zip(samples, counts):
        finite = sample[~torch.isnan(sample)]
        expected = torch.histc(finite.clamp(-5.0, 5.0), 16, -5.0, 5.0)
        torch.testing.assert_close(row, expected)
