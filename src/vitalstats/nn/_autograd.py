"""The normalisation maths: forward and closed-form backward, side by side.

Two ``torch.autograd.Function``s cover every layer in ``vitalstats.nn``; the public functions in
``functional.py`` only choose the view of the input, the reduced dimensions and the parameter
shape:

    centred (BatchNorm, LayerNorm, GroupNorm, InstanceNorm)
        x_hat = (x - mean) * invstd,   invstd = 1 / sqrt(var + eps),   var biased
        y     = x_hat * weight + bias
    root-mean-square (RMSNorm)
        x_hat = x * invrms,            invrms = 1 / sqrt(mean(x^2) + eps)
        y     = x_hat * weight

Statistics run in float32 for half/bfloat16 inputs (float64 stays float64); the output has the
input's dtype. Saved for backward: the input, the weight and per-statistic tensors (the mean,
kept in two parts for accuracy, and invstd), which is what torch's native kernels keep.

Backward is the closed form, not the graph of a composite. With ``create_graph=True``
(double backward) the statistics are recomputed from the saved input with differentiable ops,
so the same formula, written in torch ops, is differentiated again by autograd.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

Dims = tuple[int, ...]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16/float32, float64 for float64: the dtype statistics run in."""
    return torch.promote_types(dtype, torch.float32)


def _count(x: Tensor, dims: Dims) -> int:
    """Number of elements reduced into one statistic."""
    count = 1
    for dim in dims:
        count *= x.shape[dim]
    return count


def _sum_to(t: Tensor, dims: Dims, like: Tensor) -> Tensor:
    """Sum ``t`` over ``dims`` and reshape to the parameter's own shape and dtype."""
    summed = t.sum(dim=dims) if dims else t
    return summed.reshape(like.shape).to(like.dtype)


class CenteredStats(NamedTuple):
    """Statistics over the reduced dims (kept as size 1) and the centred input."""

    mean: Tensor  # rough_mean + correction
    var: Tensor  # biased
    invstd: Tensor  # 1 / sqrt(var + eps)
    centered: Tensor  # x - rough_mean
    rough_mean: Tensor  # mean(x) as first computed
    correction: Tensor  # mean(x - rough_mean)


def _broadcast_numel(a: Tensor, b: Tensor | None) -> int:
    """Number of elements of a * b (torch.broadcast_shapes is slow in Python)."""
    if b is None:
        return a.numel()
    ndim = max(a.dim(), b.dim())
    shape_a = (1,) * (ndim - a.dim()) + tuple(a.shape)
    shape_b = (1,) * (ndim - b.dim()) + tuple(b.shape)
    return math.prod(max(x, y) for x, y in zip(shape_a, shape_b, strict=True))


def _sum_of_squares(t: Tensor, dims: Dims) -> Tensor:
    """sum(t^2) over ``dims`` (keepdim). For a contiguous ``t`` the trailing block of ``dims``
    is a row reduction, done by ``vector_norm`` without a t^2 temporary, and the rest of
    ``dims`` is then summed over the small result (BatchNorm: norms over H*W per (n, c), summed
    over n). vector_norm is slow over outer dims and has a NaN gradient at 0, so it is used
    neither there nor under autograd (double backward)."""
    first_inner = t.dim()
    while first_inner > 0 and first_inner - 1 in dims:  # the trailing run of reduced dims
        first_inner -= 1
    inner = tuple(range(first_inner, t.dim()))
    if not inner or torch.is_grad_enabled() or not t.is_contiguous():
        return (t * t).sum(dim=dims, keepdim=True)
    outer = tuple(d for d in dims if d not in inner)
    row_sums = torch.linalg.vector_norm(t, dim=inner, keepdim=True).square_()
    return row_sums.sum(dim=outer, keepdim=True) if outer else row_sums


def centered_stats(x: Tensor, stat_dims: Dims, eps: float) -> CenteredStats:
    """Corrected two-pass: m0 = mean(x), c = x - m0 (exact when x is near m0), then
    mean = m0 + mean(c) and var = mean(c^2) - mean(c)^2. The correction mean(c) removes m0's
    rounding error, which matters when |mean| >> std (float32 data far from zero); on the CPU
    this is also 10-30x faster than ``torch.var_mean``'s Welford loop."""
    rough_mean = x.mean(dim=stat_dims, keepdim=True)
    centered = x - rough_mean
    correction = centered.mean(dim=stat_dims, keepdim=True)
    count = _count(x, stat_dims)
    sum_squares = _sum_of_squares(centered, stat_dims)
    var = torch.clamp(
        sum_squares / count - correction * correction, min=0.0
    )  # >= 0 despite rounding
    mean = rough_mean + correction
    return CenteredStats(mean, var, torch.rsqrt(var + eps), centered, rough_mean, correction)


def centered_backward(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    stat_dims: Dims,
) -> Tensor:
    """dL/dx of y = x_hat * w + b, statistics over ``stat_dims``:

    dx = invstd * (g - mean(g) - x_hat * mean(g * x_hat)),  g = dy * w.
    For BatchNorm this is invstd / N * (N*g - sum(g) - x_hat * sum(g * x_hat)).
    """
    x_hat = (x - mean) * invstd
    g = grad_out * weight if weight is not None else grad_out
    projection = (g * x_hat).mean(dim=stat_dims, keepdim=True)
    return invstd * (g - g.mean(dim=stat_dims, keepdim=True) - x_hat * projection)


def _sum_times_weight(t: Tensor, weight: Tensor | None, stat_dims: Dims) -> Tensor:
    """sum over ``stat_dims`` of t * weight (keepdim), without a full-size temporary: first
    sum over the dims where the weight is constant, then a matrix-vector product (LayerNorm)
    or a small product (GroupNorm) over the dims where it varies."""
    if weight is None:
        return t.sum(dim=stat_dims, keepdim=True)
    weight_shape = (1,) * (t.dim() - weight.dim()) + tuple(weight.shape)
    constant = tuple(d for d in stat_dims if weight_shape[d] == 1)
    varying = tuple(d for d in stat_dims if weight_shape[d] != 1)
    partial = t.sum(dim=constant, keepdim=True) if constant else t
    if not varying:
        return partial * weight
    trailing = varying == tuple(range(t.dim() - len(varying), t.dim()))
    if partial is t and trailing and weight.numel() == _count(t, varying):
        rows = partial.reshape(-1, weight.numel()) @ weight.reshape(-1)
        return rows.reshape(*t.shape[: t.dim() - len(varying)], *(1,) * len(varying))
    return (partial * weight).sum(dim=varying, keepdim=True)


def centered_backward_fused(
    grad_out: Tensor,
    centered: Tensor,
    weight: Tensor | None,
    invstd: Tensor,
    stat_dims: Dims,
    param_dims: Dims,
    need_weight_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """``centered_backward`` for the first-order backward with two full-size allocations
    (torch's fused kernel has one): dx = (g - mean(g) - x_hat * mean(g * x_hat)) * invstd,
    g = dy * w, written over ``centered`` (= x - mean), where g is never materialised.
    Also returns dw = sum(dy * x_hat) over ``param_dims`` when asked."""
    n = _count(centered, stat_dims)
    x_hat = centered.mul_(invstd)
    dy_x_hat = grad_out * x_hat
    grad_weight = None
    if need_weight_grad:
        grad_weight = dy_x_hat.sum(dim=param_dims) if param_dims else dy_x_hat.clone()
    projection = _sum_times_weight(dy_x_hat, weight, stat_dims) / n  # mean(g * x_hat)
    g_mean = _sum_times_weight(grad_out, weight, stat_dims) / n  # mean(g)
    grad_input = x_hat.mul_(-projection)
    if weight is None:
        grad_input.add_(grad_out)
    else:
        torch.addcmul(grad_input, grad_out, weight, out=grad_input)
    return grad_input.sub_(g_mean).mul_(invstd), grad_weight


def centered_backward_per_channel(
    grad_out: Tensor,
    centered: Tensor,
    weight: Tensor | None,
    invstd: Tensor,
    stat_dims: Dims,
) -> tuple[Tensor, Tensor, Tensor]:
    """The same dx when ``w`` is constant over ``stat_dims`` (BatchNorm, InstanceNorm), as
    dx = k * (dy - sum(dy) / n - x_hat * sum(dy * x_hat) / n), k = w * invstd, with the
    per-channel sums computed once. Returns (dx, sum(dy * x_hat), sum(dy)) for dw, db."""
    n = _count(centered, stat_dims)
    sum_dy = grad_out.sum(dim=stat_dims, keepdim=True)
    buffer = grad_out * centered
    sum_dy_x_hat = buffer.sum(dim=stat_dims, keepdim=True) * invstd
    k = invstd * weight if weight is not None else invstd
    grad_input = torch.addcmul(k * (sum_dy / -n), grad_out, k, out=buffer)  # reuse the buffer
    grad_input.addcmul_(centered, k * invstd * (sum_dy_x_hat / -n))
    return grad_input, sum_dy_x_hat, sum_dy


class CenteredNormFunction(torch.autograd.Function):
    """y = (x - mean) * invstd * weight + bias; returns (y, mean, biased var)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        stat_dims: Dims,
        param_dims: Dims,
        eps: float,
        per_channel: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        xc = x.to(compute_dtype(x.dtype))
        wc = weight.to(xc.dtype) if weight is not None else None
        bc = bias.to(xc.dtype) if bias is not None else None
        stats = centered_stats(xc, stat_dims, eps)
        mean, var, invstd, centered, correction = (
            stats.mean,
            stats.var,
            stats.invstd,
            stats.centered,
            stats.correction,
        )
        # (x - mean) = centered - correction, folded into one multiply-add per element,
        # written over ``centered`` (not saved) so the forward allocates only the output
        if per_channel or 2 * _broadcast_numel(invstd, wc) <= centered.numel():  # GroupNorm
            scale = invstd * wc if wc is not None else invstd
            shift = (
                -correction * scale
                if bc is None
                else torch.addcmul(bc, correction, scale, value=-1)
            )
            y = torch.addcmul(shift, centered, scale, out=centered)
        else:
            y = centered.sub_(correction).mul_(invstd)  # faster than addcmul with two (..., 1)
            if wc is not None and bc is not None:
                y = torch.addcmul(bc, y, wc, out=y)
            elif wc is not None:
                y = y.mul_(wc)
            elif bc is not None:
                y = y.add_(bc)
        # the mean in two parts: x - rough_mean is exact near the mean, then - correction
        ctx.save_for_backward(x, weight, stats.rough_mean, correction, invstd)
        ctx.bias_like = torch.empty_like(bias, device="meta") if bias is not None else None
        ctx.stat_dims, ctx.param_dims, ctx.eps, ctx.per_channel = (
            stat_dims,
            param_dims,
            eps,
            per_channel,
        )
        ctx.mark_non_differentiable(mean, var)
        return y.to(x.dtype), mean, var

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, _grad_mean: Any, _grad_var: Any) -> tuple:
        x, weight, rough_mean, correction, invstd = ctx.saved_tensors
        xc = x.to(compute_dtype(x.dtype))
        wc = weight.to(xc.dtype) if weight is not None else None
        gc = grad_out.to(xc.dtype)
        stat_dims, param_dims = ctx.stat_dims, ctx.param_dims
        grad_weight = grad_bias = None
        if ctx.per_channel and not torch.is_grad_enabled():
            centered = (xc - rough_mean).sub_(correction)
            grad_x, sum_dy_x_hat, sum_dy = centered_backward_per_channel(
                gc, centered, wc, invstd, stat_dims
            )
            across = tuple(d for d in param_dims if d not in stat_dims)  # InstanceNorm: batch
            if weight is not None and ctx.needs_input_grad[1]:
                grad_weight = _sum_to(sum_dy_x_hat, across, weight)
            if ctx.bias_like is not None and ctx.needs_input_grad[2]:
                grad_bias = _sum_to(sum_dy, across, ctx.bias_like)
        elif torch.is_grad_enabled():  # double backward: the formula, statistics as functions of x
            stats = centered_stats(xc, stat_dims, ctx.eps)
            mean, invstd = stats.mean, stats.invstd
            grad_x = centered_backward(gc, xc, wc, mean, invstd, stat_dims)
            if weight is not None and ctx.needs_input_grad[1]:
                grad_weight = _sum_to(gc * ((xc - mean) * invstd), param_dims, weight)
            if ctx.bias_like is not None and ctx.needs_input_grad[2]:
                grad_bias = _sum_to(gc, param_dims, ctx.bias_like)
        else:
            centered = (xc - rough_mean).sub_(correction)
            need_weight_grad = weight is not None and ctx.needs_input_grad[1]
            grad_x, grad_weight_summed = centered_backward_fused(
                gc, centered, wc, invstd, stat_dims, param_dims, need_weight_grad
            )
            if grad_weight_summed is not None:
                grad_weight = grad_weight_summed.reshape(weight.shape).to(weight.dtype)
            if ctx.bias_like is not None and ctx.needs_input_grad[2]:
                grad_bias = _sum_to(gc, param_dims, ctx.bias_like)
        return grad_x.to(x.dtype), grad_weight, grad_bias, None, None, None, None


def rms_stats(x: Tensor, stat_dims: Dims, eps: float) -> tuple[Tensor, Tensor]:
    """(mean of squares, invrms), each keeping the reduced dims as size 1."""
    mean_square = (x * x).mean(dim=stat_dims, keepdim=True)
    return mean_square, torch.rsqrt(mean_square + eps)


def rms_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor | None, invrms: Tensor, stat_dims: Dims
) -> Tensor:
    """dL/dx of y = x * invrms * w:  dx = invrms * (g - x_hat * mean(g * x_hat)),  g = dy * w."""
    x_hat = x * invrms
    g = grad_out * weight if weight is not None else grad_out
    return invrms * (g - x_hat * (g * x_hat).mean(dim=stat_dims, keepdim=True))


class RMSNormFunction(torch.autograd.Function):
    """y = x / sqrt(mean(x^2) + eps) * weight; returns (y, mean of squares)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        stat_dims: Dims,
        param_dims: Dims,
        eps: float,
    ) -> tuple[Tensor, Tensor]:
        xc = x.to(compute_dtype(x.dtype))
        mean_square, invrms = rms_stats(xc, stat_dims, eps)
        y = xc * invrms
        if weight is not None:
            y = y * weight.to(xc.dtype)
        ctx.save_for_backward(x, weight, invrms)
        ctx.stat_dims, ctx.param_dims, ctx.eps = stat_dims, param_dims, eps
        ctx.mark_non_differentiable(mean_square)
        return y.to(x.dtype), mean_square

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, _grad_mean_square: Any) -> tuple:
        x, weight, invrms = ctx.saved_tensors
        xc = x.to(compute_dtype(x.dtype))
        wc = weight.to(xc.dtype) if weight is not None else None
        gc = grad_out.to(xc.dtype)
        if torch.is_grad_enabled():  # double backward: invrms as a function of x
            _, invrms = rms_stats(xc, ctx.stat_dims, ctx.eps)
        grad_x = rms_backward(gc, xc, wc, invrms, ctx.stat_dims)
        grad_weight = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = _sum_to(gc * xc * invrms, ctx.param_dims, weight)
        return grad_x.to(x.dtype), grad_weight, None, None, None
