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

from vitalstats.stats.summary import empty_summary, merge_many

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

    home_device = None if state is None else state["mean"].device
    if state is None:
        packed = empty_summary(tuple(shape), _communication_device(group))
    else:
        packed = torch.stack([state[k].to(torch.float64) for k in _FIELDS], -1)
    merged = all_reduce_summaries(packed, group)
    home_device = merged.device if home_device is None else home_device
    fields = merged.to(home_device).unbind(-1)
    moments._state = {
        k: (v.round().to(torch.int64) if k in ("count", "nonfinite") else v)
        for k, v in zip(_FIELDS, fields, strict=True)
    }
    moments._ndim = ndim
    return moments


def all_reduce_summaries(packed: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Exact merge of packed summaries ``(..., 6)`` (``vitalstats.stats.summary`` layout:
    count, mean, M2, min, max, nonfinite) over the ranks of ``group``: one all_gather, then
    every rank merges the parts in rank order (Chan's formula for K parts), so every rank gets
    bit-identical results. Returns a new tensor on ``packed``'s device."""
    import torch.distributed as dist

    comm_device = _communication_device(group)
    local = packed.to(comm_device, torch.float64).contiguous()
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    return merge_many(torch.stack(gathered)).to(packed.device)


def _communication_device(group: Any) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
