"""Exact merge of ``Moments`` across ``torch.distributed`` ranks.

Each rank packs its (count, mean, M2, min, max, nonfinite) into one float64 tensor, all ranks
all-gather them and every rank merges the gathered summaries with Chan's formula in rank
order, so every rank ends with bit-identical statistics equal to those of the pooled data
(up to float64 rounding). Averaging per-rank variances would be wrong whenever the ranks'
counts or means differ; this never does it.

A rank that saw no data (never updated, or only empty batches) takes part with count 0; the
statistic shape is agreed through a small ``all_gather_object`` first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from vitalstats.stats.merge import chan_merge

if TYPE_CHECKING:
    from vitalstats.stats.moments import Moments

_FIELDS = ("count", "mean", "m2", "min", "max", "nonfinite")


def all_reduce_moments(moments: Moments, group: Any = None) -> Moments:
    """Replace ``moments``' state on every rank of ``group`` with the merge of all ranks'."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "Moments.all_reduce: torch.distributed is not initialised; call "
            "torch.distributed.init_process_group(...) first (or skip all_reduce on one process)"
        )
    world_size = dist.get_world_size(group)
    state = moments._state
    local_shape = None if state is None else tuple(state["mean"].shape)
    layouts: list[Any] = [None] * world_size
    dist.all_gather_object(layouts, (local_shape, moments._ndim), group=group)
    shapes = {shape for shape, _ in layouts if shape is not None}
    if len(shapes) > 1:
        per_rank = {rank: shape for rank, (shape, _) in enumerate(layouts)}
        raise ValueError(
            f"Moments.all_reduce: ranks hold statistics of different shapes {per_rank}; every "
            "rank must use the same dims on inputs with the same kept dims"
        )
    if not shapes:
        return moments  # no rank has seen anything
    shape = torch.Size(shapes.pop())
    ndim = next(nd for s, nd in layouts if s is not None)

    comm_device = _communication_device(group)
    home_device = comm_device if state is None else state["mean"].device
    if state is None:
        packed = _pack_empty(shape, comm_device)
    else:
        packed = torch.stack([state[k].to(torch.float64) for k in _FIELDS]).to(comm_device)
    gathered = [torch.empty_like(packed) for _ in range(world_size)]
    dist.all_gather(gathered, packed, group=group)

    count, mean, m2, low, high, nonfinite = _unpack(gathered[0])
    for other in gathered[1:]:
        o_count, o_mean, o_m2, o_low, o_high, o_nonfinite = _unpack(other)
        count, mean, m2 = chan_merge(count, mean, m2, o_count, o_mean, o_m2)
        low, high = torch.minimum(low, o_low), torch.maximum(high, o_high)
        nonfinite = nonfinite + o_nonfinite
    merged = dict(zip(_FIELDS, (count, mean, m2, low, high, nonfinite), strict=True))
    moments._state = {k: v.to(home_device) for k, v in merged.items()}
    moments._ndim = ndim
    return moments


def _communication_device(group: Any) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _pack_empty(shape: torch.Size, device: torch.device) -> torch.Tensor:
    packed = torch.zeros((len(_FIELDS), *shape), dtype=torch.float64, device=device)
    packed[_FIELDS.index("min")] = float("inf")
    packed[_FIELDS.index("max")] = float("-inf")
    return packed


def _unpack(packed: torch.Tensor) -> tuple[torch.Tensor, ...]:
    count, mean, m2, low, high, nonfinite = packed.unbind(0)
    return count.to(torch.int64), mean, m2, low, high, nonfinite.to(torch.int64)
