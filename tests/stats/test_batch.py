"""vs.stats.batch_moments (one batch) against float64 torch, and its compute dtypes."""

import pytest
import torch

import vitalstats as vs
from vitalstats.stats.batch import blocked_sum, compute_dtype


@pytest.mark.parametrize("offset", [0.0, 1e4, -3e5])
def test_one_batch_matches_float64_even_far_from_zero(offset):
    torch.manual_seed(0)
    x = (offset + torch.randn(300, 4, dtype=torch.float64)).to(torch.float32)
    result = vs.stats.batch_moments(x, (0,), exclude_nonfinite=True)
    x64 = x.to(torch.float64)
    var, mean = torch.var_mean(x64, dim=0, correction=0)
    # mean to ~1e-7 of the std (1): a float32-rounded mean would be off by ~1e-3 at 1e4
    torch.testing.assert_close(result.mean, mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.m2 / 300, var, rtol=1e-5, atol=0)
    assert result.count.tolist() == [300] * 4 and result.nonfinite.tolist() == [0] * 4
    assert torch.equal(result.min, x64.amin(0)) and torch.equal(result.max, x64.amax(0))


def test_batch_moments_is_a_frozen_record():
    result = vs.stats.batch_moments(torch.randn(5), (0,))
    with pytest.raises(AttributeError):
        result.count = torch.tensor(1)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.int32, torch.float64),
        (torch.bool, torch.float64),
    ],
)
def test_compute_dtypes(dtype, expected):
    assert compute_dtype(dtype) == expected


@pytest.mark.parametrize(
    ("shape", "dims"),
    [((16, 8, 40, 40), (0, 2, 3)), ((20000, 3), (0,)), ((3, 9000, 2), (1,)), ((50000,), (0,))],
)
def test_blocked_sum_is_within_two_float32_ulps_of_float64(shape, dims):
    torch.manual_seed(5)
    x = torch.rand(shape)
    reference = x.to(torch.float64).sum(dims)
    ours = blocked_sum(x, dims)
    assert ours.dtype == torch.float64 and ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, rtol=1.2e-7, atol=0)  # 2 float32 eps


def test_blocked_sum_counts_exactly_past_float32_integers():
    ones = torch.ones(2**24 + 3)  # a float32 running sum would stick at 2**24
    assert blocked_sum(ones, (0,)).item() == 2**24 + 3


def test_reduce_dims_may_be_negative_or_unsorted_and_bad_ones_are_refused():
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    var, mean = torch.var_mean(x, dim=(0, 2), correction=0)
    for dims in [(2, 0), (-1, 0), [0, -1, 2]]:
        result = vs.stats.batch_moments(x, dims)
        torch.testing.assert_close(result.mean, mean, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(result.m2 / 24, var, rtol=1e-12, atol=0)
    for dims in [(), (3,), (-4,)]:
        with pytest.raises(ValueError, match=r"reduce_dims=.*shape \(6, 3, 4\).*expected"):
            vs.stats.batch_moments(x, dims)
