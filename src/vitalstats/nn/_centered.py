"""The centred normalisation (BatchNorm, LayerNorm, GroupNorm, InstanceNorm), first order.

    forward   c = x - rough_mean (exact near the mean), correction = mean(c),
              var = mean(c^2) - correction^2, y = (c - correction) * invstd * w + b
    backward  dx = k * dy + a * c + b,  k = w * invstd, with per-statistic a, b from the two
              sums sum(dy * w) and sum(dy * w * c)

written so each full-size tensor is read or written as few times as possible; the
differentiable twin used for double backward is ``_autograd.centered_backward``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from vitalstats.nn._passes import (
    Dims,
    _broadcast_numel,
    _constant_along_last,
    _count,
    _multiply_add,
    _rows_weighted_sum,
    _sum,
    _sum_of_squares,
    _sum_times_weight,
    _trailing_run,
)


class CenteredGrads(NamedTuple):
    grad_input: Tensor
    grad_weight: Tensor | None
    grad_bias: Tensor | None


class NormalizeStats(NamedTuple):
    """Per-statistic tensors of one forward (reduced dims kept as size 1)."""

    rough_mean: Tensor  # mean(x) as first computed
    correction: Tensor  # mean(x - rough_mean): mean = rough_mean + correction
    var: Tensor  # biased
    invstd: Tensor  # 1 / sqrt(var + eps)


def centered_forward(
    centered: Tensor,
    correction: Tensor,
    invstd: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    out: Tensor,
) -> Tensor:
    """y = (centered - correction) * invstd * w + b written into ``out``, with
    centered = x - rough_mean, so centered - correction = x - mean."""
    if 2 * _broadcast_numel(invstd, weight) <= centered.numel():  # BatchNorm, GroupNorm, ...
        scale = invstd * weight if weight is not None else invstd  # per (sample,) channel
        shift = (
            -correction * scale
            if bias is None
            else torch.addcmul(bias, correction, scale, value=-1)
        )
        return _multiply_add(centered, scale, shift, out)
    y = torch.sub(centered, correction, out=out).mul_(invstd)  # LayerNorm: invstd per row
    if weight is not None and bias is not None:
        return torch.addcmul(bias, y, weight, out=y)  # weight and bias per column
    if weight is not None:
        return y.mul_(weight)
    return y.add_(bias) if bias is not None else y


def centered_normalize(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    stat_dims: Dims,
    eps: float,
    out: Tensor | None = None,
) -> tuple[Tensor, NormalizeStats]:
    """(y, statistics) by the corrected two-pass of ``centered_stats``; y is written into
    ``out`` when given (a contiguous slice of the output), else into the one new buffer."""
    count = _count(x, stat_dims)
    rough_mean = _sum(x, stat_dims) / count
    centered = torch.sub(x, rough_mean, out=out) if out is not None else x - rough_mean
    correction = _sum(centered, stat_dims) / count
    if _trailing_run(centered, stat_dims) and centered.is_contiguous():
        buffer, sum_squares = centered, _sum_of_squares(centered, stat_dims)
    else:  # channels_last, (N, C): the squares' buffer becomes the output
        buffer = centered * centered
        sum_squares = _sum(buffer, stat_dims)
    var = torch.clamp(sum_squares / count - correction * correction, min=0.0)
    invstd = torch.rsqrt(var + eps)
    y = centered_forward(centered, correction, invstd, weight, bias, buffer)
    if out is not None and y is not out:
        out.copy_(y)
    return y if out is None else out, NormalizeStats(rough_mean, correction, var, invstd)


def batch_norm_forward_chunked(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    stat_dims: Dims,
    eps: float,
    chunks: list[slice],
) -> tuple[Tensor, NormalizeStats]:
    """``centered_normalize`` for BatchNorm (statistics across dim 0) on a large input: one
    pass for the rough mean, one sweep over chunks of dim 0 writing c = x - rough_mean into
    the output and summing c and c^2 while the chunk is in cache, one pass for the affine."""
    count = _count(x, stat_dims)
    rough_mean = _sum(x, stat_dims) / count
    y = torch.empty_like(x)
    by_rows = bool(_trailing_run(x, stat_dims))
    squares = None if by_rows else torch.empty_like(x[chunks[0]])
    sum_centered = sum_squares = torch.zeros_like(rough_mean)
    for chunk in chunks:
        centered = torch.sub(x[chunk], rough_mean, out=y[chunk])
        sum_centered = sum_centered + _sum(centered, stat_dims)
        if squares is None:
            sum_squares = sum_squares + _sum_of_squares(centered, stat_dims)
        else:
            square = torch.mul(centered, centered, out=squares[: centered.shape[0]])
            sum_squares = sum_squares + _sum(square, stat_dims)
    correction = sum_centered / count
    var = torch.clamp(sum_squares / count - correction * correction, min=0.0)
    invstd = torch.rsqrt(var + eps)
    y = centered_forward(y, correction, invstd, weight, bias, y)
    return y, NormalizeStats(rough_mean, correction, var, invstd)


def centered_backward_fused(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor | None,
    rough_mean: Tensor,
    correction: Tensor,
    invstd: Tensor,
    stat_dims: Dims,
    param_dims: Dims,
    need_param_grads: bool,
    out: Tensor | None = None,
    scratch: Tensor | None = None,
) -> CenteredGrads:
    """The same dx, first order, in four full-size passes and two allocations, as
    dx = k * dy + a * c + b with c = x - rough_mean (so x_hat = (c - correction) * invstd),
    k = w * invstd, a = -invstd^2 * mean(g * x_hat), b = -invstd * mean(g) - a * correction.
    The sums sum(dy) and sum(dy * c) over the dims shared by statistics and parameters
    (BatchNorm: all; GroupNorm: space) serve both dx and dw = sum(dy * x_hat), db = sum(dy)."""
    n = _count(x, stat_dims)
    centered = torch.sub(x, rough_mean, out=scratch) if scratch is not None else x - rough_mean
    dy_centered = torch.mul(grad_out, centered, out=out) if out is not None else grad_out * centered
    # dy_centered becomes grad_input
    shared = tuple(d for d in stat_dims if d in param_dims)
    if shared == stat_dims:  # BatchNorm, InstanceNorm: w constant over the statistic's dims
        sum_dy, sum_dy_centered = _sum(grad_out, shared), _sum(dy_centered, shared)
        coefficients = _per_channel_coefficients(
            sum_dy, sum_dy_centered, correction, invstd, weight, n
        )
        grad_input = _input_grad_into(dy_centered, centered, grad_out, *coefficients[:3])
        across = tuple(d for d in param_dims if d not in shared)  # InstanceNorm: the batch
        return CenteredGrads(grad_input, _sum(coefficients[3], across), _sum(sum_dy, across))
    if shared:  # GroupNorm
        sum_dy, sum_dy_centered = _sum(grad_out, shared), _sum(dy_centered, shared)
        rest = tuple(d for d in stat_dims if d not in shared)
        sum_g = _sum_times_weight(sum_dy, weight, rest)
        sum_g_centered = _sum_times_weight(sum_dy_centered, weight, rest)
        across = tuple(d for d in param_dims if d not in shared)
        grad_weight = _sum((sum_dy_centered - correction * sum_dy) * invstd, across)
        grad_bias = _sum(sum_dy, across)
    else:  # LayerNorm: parameters along the statistic's own dims
        sum_g = _sum_times_weight(grad_out, weight, stat_dims)
        sum_g_centered = _sum_times_weight(dy_centered, weight, stat_dims)
        grad_weight = grad_bias = None
        if need_param_grads:  # sums over rows: transposed matrix-vector products
            grad_weight = _rows_weighted_sum(dy_centered, invstd, n)
            grad_weight -= _rows_weighted_sum(grad_out, invstd * correction, n)
            grad_bias = grad_out.reshape(invstd.numel(), n).sum(dim=0)
    projection = invstd * (sum_g_centered - correction * sum_g) / n  # mean(g * x_hat)
    g_mean = sum_g / n
    a = -invstd * invstd * projection
    if 2 * _broadcast_numel(invstd, weight) <= x.numel():  # k per (sample,) channel
        scale = invstd * weight if weight is not None else invstd
        b = torch.addcmul(-invstd * g_mean, a, correction, value=-1)
        grad_input = _input_grad_into(dy_centered, centered, grad_out, a, b, scale)
    else:  # LayerNorm: dx = invstd * (dy * w + c * a / invstd + b / invstd)
        a_over_invstd = -invstd * projection
        b_over_invstd = torch.addcmul(-g_mean, a_over_invstd, correction, value=-1)
        centered.mul_(a_over_invstd).add_(b_over_invstd)
        if weight is None:
            grad_input = torch.add(centered, grad_out, out=dy_centered).mul_(invstd)
        else:
            grad_input = torch.addcmul(centered, grad_out, weight, out=dy_centered).mul_(invstd)
    return CenteredGrads(grad_input, grad_weight, grad_bias)


def _per_channel_coefficients(
    sum_dy: Tensor,
    sum_dy_centered: Tensor,
    correction: Tensor,
    invstd: Tensor,
    weight: Tensor | None,
    n: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(a, b, k, sum(dy * x_hat)) of dx = k * dy + a * c + b when w is constant over the
    statistic's n values: dx = k * (dy - sum(dy) / n - x_hat * sum(dy * x_hat) / n),
    k = w * invstd, x_hat = (c - correction) * invstd."""
    sum_dy_x_hat = (sum_dy_centered - correction * sum_dy) * invstd
    scale = invstd * weight if weight is not None else invstd
    a = scale * invstd * sum_dy_x_hat / -n
    b = torch.addcmul(scale * sum_dy / -n, a, correction, value=-1)
    return a, b, scale, sum_dy_x_hat


def _input_grad_into(
    out: Tensor, centered: Tensor, grad_out: Tensor, a: Tensor, b: Tensor, scale: Tensor
) -> Tensor:
    """out = scale * dy + a * centered + b, all three coefficients small (per channel);
    ``centered`` is overwritten."""
    if _constant_along_last(scale):
        return torch.addcmul(centered.mul_(a).add_(b), grad_out, scale, out=out)
    # channels_last, (N, C): the coefficients vary along the contiguous dim
    return torch.addcmul(b, centered, a, out=out).addcmul_(grad_out, scale)


def batch_norm_backward_chunked(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor | None,
    rough_mean: Tensor,
    correction: Tensor,
    invstd: Tensor,
    stat_dims: Dims,
    chunks: list[slice],
) -> CenteredGrads:
    """``centered_backward_fused`` for BatchNorm (statistics = parameter dims, across dim 0) on
    a large input, in two sweeps over chunks of dim 0 that each stay in cache: first
    c = x - rough_mean (kept in the dx buffer) and the sums sum(dy), sum(dy * c), then
    dx = k * dy + a * c + b in place. Main memory sees x once, dy twice, dx three times."""
    n = _count(x, stat_dims)
    product = torch.empty_like(x[chunks[0]])
    grad_input = torch.empty_like(x)  # holds c until the second sweep
    sum_dy = sum_dy_centered = torch.zeros_like(invstd)
    for chunk in chunks:
        centered = torch.sub(x[chunk], rough_mean, out=grad_input[chunk])
        sum_dy = sum_dy + _sum(grad_out[chunk], stat_dims)
        dy_centered = torch.mul(grad_out[chunk], centered, out=product[: centered.shape[0]])
        sum_dy_centered = sum_dy_centered + _sum(dy_centered, stat_dims)
    a, b, scale, sum_dy_x_hat = _per_channel_coefficients(
        sum_dy, sum_dy_centered, correction, invstd, weight, n
    )
    for chunk in chunks:
        centered = grad_input[chunk]
        _input_grad_into(centered, centered, grad_out[chunk], a, b, scale)
    return CenteredGrads(grad_input, sum_dy_x_hat, sum_dy)
