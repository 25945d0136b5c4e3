"""Running statistics across ranks: how far apart they are, and averaging them.

DistributedDataParallel with ``broadcast_buffers=False`` (a common speed setting) lets each
rank's BatchNorm update ``running_mean``/``running_var`` from its own batches only, so the
buffers drift apart and a checkpoint saved on rank 0 holds rank 0's alone.

    >>> divergence = vs.nn.check_buffer_divergence(model)   # {layer name: largest divergence}
    >>> vs.nn.sync_buffers(model)                            # average across ranks

Both are collectives: every rank of the group must call them, with the same model. Without
an initialised process group (or in a group of one) there is nothing to compare: divergence
is 0 for every layer and ``sync_buffers`` does nothing. ``vs.nn.recompute_bn_stats`` gives
exact population statistics instead of an average of running estimates.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["check_buffer_divergence", "layers_with_running_stats", "sync_buffers"]


def layers_with_running_stats(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(qualified name, module) of every layer with ``running_mean`` and ``running_var`` tensors
    (BatchNorm, SyncBatchNorm, InstanceNorm with track_running_stats, torch's or vitalstats')."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "running_mean", None), Tensor)
        and isinstance(getattr(module, "running_var", None), Tensor)
    ]


def _group_size(group: Any | None) -> int:
    """World size of ``group``; 1 when there is no process group (or this rank is outside it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return max(dist.get_world_size(group), 1)


def _collective_device(layers: list[tuple[str, torch.nn.Module]], group: Any | None):
    """Where this rank's collective tensors live: its buffers' device, or for a rank without
    any, the current CUDA device under NCCL (which cannot move CPU tensors) and else the CPU."""
    if layers:
        return layers[0][1].running_mean.device
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _check_same_layout(
    layers: list[tuple[str, torch.nn.Module]], group: Any | None, what: str
) -> None:
    """Every rank must hold the same number of layers with the same number of channels (a size
    mismatch inside a gloo collective aborts the process, so compare first). Runs on every
    rank, even one without such layers, so that rank cannot leave its peers waiting."""
    device = _collective_device(layers, group)
    mine = torch.tensor(
        [len(layers), sum(m.running_mean.numel() for _, m in layers)], device=device
    )
    every = [torch.empty_like(mine) for _ in range(_group_size(group))]
    dist.all_gather(every, mine, group)
    rows = [t.tolist() for t in every]
    if any(row != rows[0] for row in rows):
        per_rank = ", ".join(
            f"rank {rank}: {count} layers with {channels} channels in all"
            for rank, (count, channels) in enumerate(rows)
        )
        raise ValueError(
            f"{what}: the ranks hold different models ({per_rank}). Fix: call it with the same "
            "model on every rank of the process group (e.g. the module inside DDP)."
        )


def _flat_statistics(layers: list[tuple[str, torch.nn.Module]]) -> Tensor:
    """float64 [running_mean of layer 1, running_var of layer 1, layer 2, ...] on one device."""
    device = layers[0][1].running_mean.device
    return torch.cat(
        [
            t.detach().to(device=device, dtype=torch.float64).flatten()
            for _, m in layers
            for t in (m.running_mean, m.running_var)
        ]
    )


def check_buffer_divergence(model: torch.nn.Module, group: Any | None = None) -> dict[str, float]:
    """Per layer with running statistics, the largest disagreement between ranks:

        mean spread = (max_r running_mean - min_r running_mean) / sqrt(mean_r running_var + eps)
        var spread  = log((max_r running_var + eps) / (min_r running_var + eps))

    per channel, and the layer's value is the larger of the two over its channels. Both are
    unit-free: 0 means identical on every rank, 0.1 means the ranks disagree by about a tenth
    of a standard deviation in mean or about 10 % in variance. Keys are the layers' qualified
    names. A collective over ``group`` (default: the whole world); one host sync per call.
    """
    layers = layers_with_running_stats(model)
    world_size = _group_size(group)
    if world_size == 1:
        return {name: 0.0 for name, _ in layers}
    _check_same_layout(layers, group, "check_buffer_divergence")
    if not layers:  # the same on every rank: nothing to compare
        return {}
    flat = _flat_statistics(layers)
    every = [torch.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(every, flat, group)
    stacked = torch.stack(every)  # (R, sum over layers of 2C)
    divergences = []
    offset = 0
    for _, module in layers:
        channels = module.running_mean.numel()
        means = stacked[:, offset : offset + channels]  # (R, C)
        eps = getattr(module, "eps", 1e-5)
        variances = stacked[:, offset + channels : offset + 2 * channels] + eps
        offset += 2 * channels
        mean_gap = means.amax(dim=0) - means.amin(dim=0)
        largest_var, smallest_var = variances.amax(dim=0), variances.amin(dim=0)
        # identical on every rank is 0, also for a dead channel (var 0) in a layer with eps=0
        mean_spread = torch.where(mean_gap == 0, 0.0, mean_gap / variances.mean(dim=0).sqrt())
        var_spread = torch.where(
            largest_var == smallest_var, 0.0, (largest_var / smallest_var).log()
        )
        divergences.append(torch.maximum(mean_spread, var_spread).amax())
    values = torch.stack(divergences).tolist()
    return {name: value for (name, _), value in zip(layers, values, strict=True)}


def sync_buffers(model: torch.nn.Module, group: Any | None = None) -> None:
    """Average ``running_mean`` and ``running_var`` of every layer across the ranks of
    ``group`` (in float64, in place); ``num_batches_tracked`` becomes the largest count.

    An average of running estimates, not the statistics of the pooled data: with ranks whose
    data differ, the averaged ``running_var`` misses the spread between the ranks' means.
    For exact values recompute them with ``vs.nn.recompute_bn_stats``.
    """
    layers = layers_with_running_stats(model)
    world_size = _group_size(group)
    if world_size == 1:
        return
    _check_same_layout(layers, group, "sync_buffers")
    if not layers:  # the same on every rank: nothing to average
        return
    flat = _flat_statistics(layers)
    dist.all_reduce(flat, group=group)
    flat /= world_size
    offset = 0
    for _, module in layers:
        with torch.no_grad():
            for buffer in (module.running_mean, module.running_var):
                buffer.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
                offset += buffer.numel()
    counters = [
        m.num_batches_tracked
        for _, m in layers
        if isinstance(getattr(m, "num_batches_tracked", None), Tensor)
    ]
    if counters:
        stacked = torch.stack([c.to(counters[0].device) for c in counters])
        dist.all_reduce(stacked, op=dist.ReduceOp.MAX, group=group)
        for counter, value in zip(counters, stacked, strict=True):
            counter.copy_(value)
