"""BatchNorm probes: batch statistics against running statistics, and misuse checks.

Runtime checks read only Python state (``module.training``, ``requires_grad``, shapes), so
they cost nothing on the device. The drift probe records per-channel batch moments and the
running statistics from *before* the batch updated them (what inference would have used).
"""

from __future__ import annotations

import torch
from torch import nn

from vitalstats.monitor.recorder import Entry, raw_moments


def is_batchnorm(module: nn.Module) -> bool:
    """torch's ``_BatchNorm`` family (incl. SyncBatchNorm) or vitalstats' ``_BatchNorm``."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    return any(
        cls.__name__ == "_BatchNorm" and cls.__module__.startswith("vitalstats")
        for cls in type(module).__mro__
    )


def values_per_channel(module: nn.Module, x: torch.Tensor) -> int:
    """How many values each channel's batch statistics are computed from: N * spatial."""
    channels = x.shape[1] if x.dim() >= 2 else 1
    return x.numel() // max(1, channels)


def uses_batch_statistics(module: nn.Module) -> bool:
    """Whether the forward normalises with batch statistics (torch's rule: training mode, or
    no running buffers at all)."""
    return module.training or (module.running_mean is None and module.running_var is None)


def frozen_but_updating(module: nn.Module) -> bool:
    """Affine parameters frozen (requires_grad=False) while training mode keeps updating the
    running statistics."""
    params = [p for p in (module.weight, module.bias) if p is not None]
    return (
        module.training
        and module.track_running_stats
        and module.running_mean is not None
        and bool(params)
        and not any(p.requires_grad for p in params)
    )


def track_flag_flipped(module: nn.Module) -> bool:
    """``track_running_stats`` is False but the running buffers exist: the flag was changed
    after construction (in eval mode the stale buffers are still used)."""
    return not module.track_running_stats and module.running_mean is not None


def running_snapshot(module: nn.Module) -> list[Entry]:
    """Copies of running_mean / running_var before the forward updates them."""
    if module.running_mean is None or module.running_var is None:
        return []
    return [
        ("bn_running_mean", module.running_mean.detach().clone(), "same"),
        ("bn_running_var", module.running_var.detach().clone(), "same"),
    ]


def batch_moments_from_input(x: torch.Tensor) -> torch.Tensor:
    """(6, C) raw per-channel count, sum and sum of squares of a (N, C, *) input (dims all
    but 1); min/max/non-finite are not needed for the drift."""
    dims = tuple(d for d in range(x.dim()) if d != 1)
    return raw_moments(x.detach(), dims, extremes=False)


def batch_moments_from_attributes(module: nn.Module, count: int) -> torch.Tensor | None:
    """(6, C) raw moments rebuilt from a vitalstats BatchNorm's ``batch_mean``/``batch_var``
    (biased): sum = n mean, sum of squares = n (var + mean^2). Min/max are not known."""
    mean, var = getattr(module, "batch_mean", None), getattr(module, "batch_var", None)
    if mean is None or var is None:
        return None
    mean, var = mean.detach().double(), var.detach().double()
    n = torch.full_like(mean, float(count))
    inf = torch.full_like(mean, float("inf"))
    return torch.stack([n, n * mean, n * (var + mean * mean), inf, -inf, torch.zeros_like(mean)])


@torch.no_grad()
def running_nonfinite_flags(modules: list[tuple[str, nn.Module]]) -> list[Entry]:
    """Per BatchNorm 1.0 when running_mean/running_var hold NaN/Inf (flush-time check)."""
    out = []
    for name, module in modules:
        if module.running_mean is None or module.running_var is None:
            continue
        total = module.running_mean.sum() + module.running_var.sum()
        out.append((name, (~torch.isfinite(total)).to(torch.float32)))
    return out
