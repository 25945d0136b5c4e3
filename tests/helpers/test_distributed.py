import pytest
import torch
import torch.distributed as dist

from tests.helpers.distributed import run_ranks


def _sum_of_ranks(rank: int, world_size: int, offset: float) -> torch.Tensor:
    t = torch.tensor([rank + offset])
    dist.all_reduce(t)
    return t


def _fails_on_rank_one(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ValueError("boom on rank one")


def _rank_one_hangs(rank: int, world_size: int) -> None:
    if rank == 1:
        import time

        time.sleep(60)


def test_results_come_back_per_rank():
    out = run_ranks(_sum_of_ranks, world_size=2, args=(10.0,))
    assert [o.item() for o in out] == [21.0, 21.0]


def test_a_failing_rank_raises_with_its_traceback():
    with pytest.raises(RuntimeError, match="boom on rank one"):
        run_ranks(_fails_on_rank_one, world_size=2)


def test_a_hanging_rank_is_killed():
    with pytest.raises(TimeoutError, match=r"ranks \[1\]"):
        run_ranks(_rank_one_hangs, world_size=2, timeout=30)  # slack for a loaded CI machine
