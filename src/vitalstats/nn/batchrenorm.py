"""Batch Renormalization (Ioffe 2017): BatchNorm whose training output uses the running
statistics' scale, so training and inference agree even for small or non-i.i.d. batches.

In training, with batch statistics mu_B, sigma_B = sqrt(var_B + eps) and running ones
mu, sigma = sqrt(running_var + eps):

    r = clip(sigma_B / sigma, 1 / r_max, r_max)        (no gradient through r)
    d = clip((mu_B - mu) / sigma, -d_max, d_max)       (no gradient through d)
    y = ((x - mu_B) / sigma_B * r + d) * weight + bias

With r = 1, d = 0 this is BatchNorm; with r and d unclipped it equals the inference output
(x - mu) / sigma * weight + bias. The limits follow the paper's schedule: r_max = 1 and
d_max = 0 for ``warmup_steps`` training batches, then both grow linearly over ``ramp_steps``
batches to ``r_max`` and ``d_max``. Running statistics, eval mode, buffers and ``state_dict``
are exactly BatchNorm's (PyTorch momentum convention, unbiased ``running_var``), so a trained
BatchRenorm loads into a BatchNorm for inference.

    >>> import torch, vitalstats as vs
    >>> brn = vs.nn.BatchRenorm2d(8, r_max=3.0, d_max=5.0, warmup_steps=100, ramp_steps=1000)
    >>> brn(torch.randn(4, 8, 6, 6)).shape
    torch.Size([4, 8, 6, 6])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vitalstats.nn._batch_norm import batch_norm_training, batch_statistics
from vitalstats.nn.batchnorm import _BatchNorm
from vitalstats.nn.functional import (
    check_eps,
    check_values_per_channel,
    normalize_with_running_stats,
)

__all__ = ["BatchRenorm1d", "BatchRenorm2d"]


class _BatchRenorm(_BatchNorm):
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 5000,
        ramp_steps: int = 20000,
        skip_nonfinite: bool = True,
    ) -> None:
        if r_max < 1.0 or d_max < 0.0 or warmup_steps < 0 or ramp_steps < 0:
            raise ValueError(
                f"{type(self).__name__}: need r_max >= 1, d_max >= 0 and non-negative "
                f"warmup_steps/ramp_steps, got r_max={r_max}, d_max={d_max}, "
                f"warmup_steps={warmup_steps}, ramp_steps={ramp_steps}."
            )
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            True,
            device,
            dtype,
            bias=bias,
            skip_nonfinite=skip_nonfinite,
        )
        self.r_max, self.d_max = r_max, d_max
        self.warmup_steps, self.ramp_steps = warmup_steps, ramp_steps

    def current_limits(self) -> tuple[Tensor, Tensor]:
        """(r_max, d_max) now, from ``num_batches_tracked``: 0-d tensors, no host sync."""
        steps = self.num_batches_tracked.double()
        progress = ((steps - self.warmup_steps) / max(self.ramp_steps, 1)).clamp(0.0, 1.0)
        if self.ramp_steps == 0:
            progress = (steps >= self.warmup_steps).double()
        return 1.0 + (self.r_max - 1.0) * progress, self.d_max * progress

    def corrections(self, batch_mean: Tensor, batch_var: Tensor) -> tuple[Tensor, Tensor]:
        """(r, d) per channel, detached, float32 (float64 for float64 buffers)."""
        r_limit, d_limit = self.current_limits()
        running_std = torch.sqrt(self.running_var.to(batch_var.dtype) + self.eps)
        r = torch.sqrt(batch_var + self.eps) / running_std
        d = (batch_mean - self.running_mean.to(batch_mean.dtype)) / running_std
        r = torch.minimum(torch.maximum(r, 1.0 / r_limit), r_limit)
        d = torch.minimum(torch.maximum(d, -d_limit), d_limit)
        return r.to(batch_var.dtype).detach(), d.to(batch_mean.dtype).detach()

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        check_eps(self.eps, self.layer_label(), self.training)
        if not self.training:
            return normalize_with_running_stats(
                input, self.running_mean, self.running_var, self.weight, self.bias, self.eps
            )
        check_values_per_channel(input, self.layer_label())
        with torch.no_grad():  # the batch statistics, for r and d
            batch_mean, batch_var = batch_statistics(input.detach())
        r, d = self.corrections(batch_mean, batch_var)
        # ((x - mu_B) / sigma_B * r + d) * w + b  ==  BatchNorm with weight w * r, bias w * d + b
        weight = r if self.weight is None else self.weight * r.to(self.weight.dtype)
        bias = d if self.weight is None else self.weight * d.to(self.weight.dtype)
        if self.bias is not None:
            bias = bias + self.bias
        output, mean, var, unbiased = batch_norm_training(
            input, weight, bias, self.eps, self.running_mean.dtype
        )
        self.__dict__["batch_mean"], self.__dict__["batch_var"] = mean.float(), var.float()
        self._update_running_stats(mean, unbiased)
        return output

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}, "
            f"warmup_steps={self.warmup_steps}, ramp_steps={self.ramp_steps}"
        )


class BatchRenorm1d(_BatchRenorm):
    """Batch Renormalization over (N, C) or (N, C, L) input; see the module docstring."""

    _expected_dims = (2, 3)
    _input_layout = "2-D (N, C) or 3-D (N, C, L)"


class BatchRenorm2d(_BatchRenorm):
    """Batch Renormalization over (N, C, H, W) input; see the module docstring."""

    _expected_dims = (4,)
    _input_layout = "4-D (N, C, H, W)"
