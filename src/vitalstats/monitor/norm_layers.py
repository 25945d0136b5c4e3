"""BatchNorm probes: batch statistics against running statistics, and Python-state checks.

The state checks read only Python attributes (``module.training``, ``requires_grad``,
shapes), so they cost nothing on the device. The drift probe compares the batch statistics
of a training forward with the running statistics from *before* that batch updated them
(what inference would have used). It costs no pass over the input:

* vitalstats' BatchNorm publishes ``batch_mean`` / ``batch_var`` (biased);
* torch's BatchNorm updates ``running = (1 - m) running + m * batch`` (unbiased variance,
  ``m`` = momentum, or 1 / num_batches_tracked when momentum is None), so the batch
  statistics are recovered exactly from the buffers before and after the forward:
  ``batch = (running_after - (1 - m) running_before) / m``, with about ``ulp / m`` rounding;
* without running buffers (or with momentum 0) they are summarised from the input.
"""

from __future__ import annotations

import torch
from torch import nn

from vitalstats.monitor.recorder import Entry
from vitalstats.stats.batch import batch_moments
from vitalstats.stats.summary import as_raw

BN_RUNNING_MEAN, BN_RUNNING_VAR = "bn_running_mean", "bn_running_var"  # (C,) before the batch
BN_BATCH = "bn_batch"  # (C, 7) per-channel raw summaries of the batch
BN_RUNNING_NONFINITE = "bn_running_nonfinite"


def is_batchnorm(module: nn.Module) -> bool:
    """torch's ``_BatchNorm`` family (incl. SyncBatchNorm) or vitalstats' ``_BatchNorm``."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True
    return any(
        cls.__name__ == "_BatchNorm" and cls.__module__.startswith("vitalstats")
        for cls in type(module).__mro__
    )


def is_dropout(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0


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
        (BN_RUNNING_MEAN, module.running_mean.detach().clone(), "same"),
        (BN_RUNNING_VAR, module.running_var.detach().clone(), "same"),
    ]


def _update_weight(module: nn.Module) -> float | torch.Tensor | None:
    """The factor m of the running update just made: momentum, or 1 / num_batches_tracked
    (a device tensor, already incremented by the forward) for a cumulative average."""
    if module.momentum is not None:
        return float(module.momentum) if module.momentum > 0 else None
    tracked = getattr(module, "num_batches_tracked", None)
    return None if tracked is None else 1.0 / tracked.to(torch.float64)


def batch_summaries(
    module: nn.Module, x: torch.Tensor, before: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor | None:
    """(C, 7) per-channel raw summaries (``as_raw`` of [count, mean, M2, ...]) of the batch a
    training forward normalised with (see the module docstring); None when unknown."""
    n = values_per_channel(module, x)
    if n == 0:
        return None
    mean = module.__dict__.get("batch_mean")
    var = module.__dict__.get("batch_var")  # vitalstats: biased batch variance
    if mean is not None and var is not None:
        mean, m2 = mean.detach().double(), var.detach().double() * n
    elif before is not None and _update_weight(module) is not None:
        m = _update_weight(module)
        keep = 1.0 - m
        mean = (module.running_mean.detach().double() - keep * before[0].double()) / m
        unbiased = (module.running_var.detach().double() - keep * before[1].double()) / m
        m2 = unbiased * max(n - 1, 0)
    else:  # no running update to invert: summarise the input
        dims = tuple(d for d in range(x.dim()) if d != 1)
        moments = batch_moments(x.detach(), dims, exclude_nonfinite=False)
        mean, m2 = moments.mean, moments.m2
    count = torch.full_like(mean, float(n))
    inf = torch.full_like(mean, float("inf"))
    return as_raw(torch.stack([count, mean, m2, inf, -inf, torch.zeros_like(mean)], -1))


@torch.no_grad()
def running_nonfinite_flags(
    modules: list[tuple[str, nn.Module]],
) -> list[tuple[str, torch.Tensor]]:
    """Per BatchNorm 1.0 when running_mean/running_var hold NaN/Inf (flush-time check)."""
    out = []
    for name, module in modules:
        if module.running_mean is None or module.running_var is None:
            continue
        total = module.running_mean.sum() + module.running_var.sum()
        out.append((name, (~torch.isfinite(total)).to(torch.float32)))
    return out
