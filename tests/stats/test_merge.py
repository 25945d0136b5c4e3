"""vs.stats.chan_merge against float64 statistics of the concatenated data."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vitalstats as vs


def summary(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    count = torch.tensor(x.numel(), dtype=torch.int64)
    if x.numel() == 0:
        zero = torch.tensor(0.0, dtype=torch.float64)
        return count, zero, zero
    mean = x.mean()
    return count, mean, ((x - mean) ** 2).sum()


@settings(max_examples=40, deadline=None)
@given(
    n_a=st.integers(0, 50),
    n_b=st.integers(0, 50),
    shift=st.floats(-1e6, 1e6),
)
def test_merge_equals_pooled_statistics(n_a, n_b, shift):
    torch.manual_seed(n_a * 100 + n_b)
    a = torch.randn(n_a, dtype=torch.float64) + shift
    b = torch.randn(n_b, dtype=torch.float64) * 3 - shift
    count, mean, m2 = vs.stats.chan_merge(*summary(a), *summary(b))
    pooled = torch.cat([a, b])
    assert count.item() == n_a + n_b
    if pooled.numel():
        torch.testing.assert_close(mean, pooled.mean(), rtol=1e-12, atol=1e-9)
        expected_m2 = ((pooled - pooled.mean()) ** 2).sum()
        torch.testing.assert_close(m2, expected_m2, rtol=1e-9, atol=1e-9)
    else:
        assert mean.item() == 0.0 and m2.item() == 0.0


def test_an_empty_side_with_a_nan_mean_is_ignored():
    count_a, mean_a, m2_a = (
        torch.tensor(3),
        torch.tensor(2.0, dtype=torch.float64),
        torch.tensor(5.0, dtype=torch.float64),
    )
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    count, mean, m2 = vs.stats.chan_merge(count_a, mean_a, m2_a, torch.tensor(0), nan, nan)
    assert (count.item(), mean.item(), m2.item()) == (3, 2.0, 5.0)
    count, mean, m2 = vs.stats.chan_merge(torch.tensor(0), nan, nan, count_a, mean_a, m2_a)
    assert (count.item(), mean.item(), m2.item()) == (3, 2.0, 5.0)
