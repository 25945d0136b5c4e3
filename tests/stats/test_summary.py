"""summarize(): exact packed moments of a tensor, and their exact merges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalstats.stats.summary import (
    SUMMARY_FIELDS,
    empty_summary,
    merge_many,
    merge_summaries,
    summarize,
    variance,
)


def _oracle(x: torch.Tensor) -> np.ndarray:
    v = x.detach().double().reshape(-1).numpy()
    finite = np.isfinite(v)
    mean = v.mean()
    return np.array([v.size, mean, ((v - mean) ** 2).sum(), v.min(), v.max(), (~finite).sum()])


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 17), min_size=1, max_size=4),
    offset=st.sampled_from([0.0, 1.0, -3e2, 1e4]),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
    seed=st.integers(0, 2**16),
)
def test_float32_summary_matches_float64_oracle_far_from_zero(shape, offset, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset).float()
    got = summarize(x).numpy()
    want = _oracle(x)
    assert got[0] == want[0] and got[5] == 0
    assert got[1] == pytest.approx(want[1], rel=1e-6, abs=1e-6 * scale)
    # centred second pass: M2 keeps float32 precision whatever mean^2 / var is
    assert got[2] == pytest.approx(want[2], rel=2e-5, abs=1e-30)
    assert (got[3], got[4]) == (want[3], want[4])


def test_the_one_pass_formula_would_fail_where_the_centred_pass_does_not():
    """A LayerNorm gain after a few steps: mean 1, std 1e-4 (mean^2 / var = 1e8)."""
    x = (1.0 + 1e-4 * torch.randn(4096, dtype=torch.float64)).float()
    exact = x.double().var(correction=0).item()
    one_pass = (x.square().sum() / x.numel() - (x.sum() / x.numel()) ** 2).item()
    assert abs(one_pass - exact) / exact > 0.1  # the cancelling formula loses every digit
    got = summarize(x)
    assert variance(got).item() == pytest.approx(exact, rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_inputs(dtype):
    x = (torch.randn(3, 1000, dtype=torch.float64) * 2 + 5).to(dtype)
    got = summarize(x).numpy()
    want = _oracle(x)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5  # float32 accumulation
    np.testing.assert_allclose(got[:3], want[:3], rtol=tolerance)
    np.testing.assert_array_equal(got[3:], want[3:])


def test_nonfinite_values_are_counted_and_propagate():
    x = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 2.0])
    got = summarize(x)
    assert got[0] == 5 and got[5] == 3
    assert torch.isnan(got[1]) and torch.isnan(got[2])
    assert summarize(torch.tensor([1.0, float("inf")]))[4] == float("inf")


def test_extremes_off_and_empty_tensors():
    x = torch.randn(10)
    got = summarize(x, extremes=False)
    assert got[3] == float("inf") and got[4] == -float("inf") and got[5] == 0
    assert torch.equal(summarize(torch.zeros(0)), empty_summary())
    assert SUMMARY_FIELDS == ("count", "mean", "m2", "min", "max", "nonfinite")


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 50), min_size=1, max_size=6),
    offset=st.floats(-1e3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_merging_parts_equals_the_summary_of_their_concatenation(sizes, offset, seed):
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(n, generator=g, dtype=torch.float64) + offset for n in sizes]
    whole = torch.cat(parts)
    pairwise = empty_summary()
    for part in parts:
        pairwise = merge_summaries(pairwise, summarize(part))
    stacked = merge_many(torch.stack([summarize(p) for p in parts]))
    if whole.numel() == 0:
        assert torch.equal(stacked, empty_summary()) and pairwise[0] == 0
        return
    want = _oracle(whole)
    for got in (pairwise.numpy(), stacked.numpy()):
        assert got[0] == want[0]
        np.testing.assert_allclose(got[1:3], want[1:3], rtol=1e-10, atol=1e-9)
        np.testing.assert_array_equal(got[3:], want[3:])


def test_merges_work_elementwise_over_leading_dims():
    a = torch.stack([summarize(torch.randn(7)), summarize(torch.randn(3) + 4)])
    b = torch.stack([summarize(torch.randn(5)), empty_summary()])
    merged = merge_summaries(a, b)
    assert merged.shape == (2, 6)
    assert torch.equal(merged[1], a[1])  # merging an empty summary changes nothing


def test_sampled_nonfinite_count_is_exact_zero_when_finite_and_estimates_otherwise():
    from vitalstats.stats.summary import raw_summary

    x = torch.randn(100_000)
    assert raw_summary(x, nonfinite_sample=1000)[6] == 0
    x[torch.randperm(100_000, generator=torch.Generator().manual_seed(0))[:10_000]] = float("nan")
    estimate = raw_summary(x, nonfinite_sample=8192)[6].item()
    assert estimate == pytest.approx(10_000, rel=0.15)  # binomial: 3.3% standard error
    assert raw_summary(x)[6] == 10_000  # the exact count
