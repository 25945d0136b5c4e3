"""Moments.all_reduce on 2 gloo ranks against the float64 statistics of the pooled data."""

import pytest
import torch

import vitalstats as vs
from tests.helpers.distributed import run_ranks

pytestmark = pytest.mark.distributed


def _rank_data(seed: int, rank: int, rows: int, shift: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 10 + rank)
    return torch.randn(rows, 3, 2, generator=generator, dtype=torch.float64) * (rank + 1) + shift


def _scenarios(rank: int, world_size: int) -> dict:
    """Every scenario in one spawn (process start-up dominates the cost)."""
    results = {}

    # unequal sizes and means per rank, fed in several batches each
    rows = [1000, 37][rank]
    x = _rank_data(1, rank, rows, shift=[0.0, 50.0][rank])
    m = vs.stats.Moments((0, 2))
    for chunk in x.split(64):
        m.update(chunk)
    results["unequal"] = m.all_reduce().state_dict()

    # rank 1 holds no data at all (never updated)
    m = vs.stats.Moments((0, 2))
    if rank == 0:
        m.update(_rank_data(2, rank, 20, shift=3.0))
    results["one_empty"] = m.all_reduce().state_dict()

    # nobody has data: stays empty, no error
    results["all_empty"] = vs.stats.Moments(0).all_reduce().state_dict()

    # different statistic shapes: every rank gets the same clear error
    m = vs.stats.Moments(0).update(torch.randn(4, 2 + rank))
    try:
        m.all_reduce()
        results["mismatch"] = "no error"
    except ValueError as error:
        results["mismatch"] = str(error)
    return results


def test_all_reduce_is_an_exact_merge_across_ranks():
    per_rank = run_ranks(_scenarios, world_size=2, timeout=120)

    pooled = torch.cat([_rank_data(1, 0, 1000, 0.0), _rank_data(1, 1, 37, 50.0)])
    var, mean = torch.var_mean(pooled, dim=(0, 2), correction=0)
    for result in per_rank:
        merged = vs.stats.Moments.from_state_dict(result["unequal"])
        torch.testing.assert_close(merged.mean, mean, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(merged.var(), var, rtol=1e-12, atol=0)
        assert torch.equal(merged.min, pooled.amin((0, 2)))
        assert torch.equal(merged.max, pooled.amax((0, 2)))
        assert merged.count.tolist() == [1037 * 2] * 3
    assert torch.equal(per_rank[0]["unequal"]["m2"], per_rank[1]["unequal"]["m2"])  # bit-identical

    only = _rank_data(2, 0, 20, shift=3.0)
    var, mean = torch.var_mean(only, dim=(0, 2), correction=0)
    for result in per_rank:
        merged = vs.stats.Moments.from_state_dict(result["one_empty"])
        torch.testing.assert_close(merged.mean, mean, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(merged.var(), var, rtol=1e-12, atol=0)
        assert merged.count.tolist() == [40] * 3

    for result in per_rank:
        assert "count" not in result["all_empty"]
        assert "different shapes" in result["mismatch"] and "(2,)" in result["mismatch"]


def test_all_reduce_without_a_process_group_says_how_to_fix_it():
    with pytest.raises(RuntimeError, match="init_process_group"):
        vs.stats.Moments().update(torch.randn(3)).all_reduce()
