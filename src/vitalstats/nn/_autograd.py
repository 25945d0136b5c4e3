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

Speed on the CPU comes from the number of passes over memory, not the flop count: reductions
along the contiguous last dim first, per-statistic coefficients computed on small tensors, and
each full-size result written into a buffer already allocated (forward: one, backward: one).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from vitalstats.nn._centered import (
    NormalizeStats,
    batch_norm_backward_chunked,
    batch_norm_forward_chunked,
    centered_backward_fused,
    centered_normalize,
)
from vitalstats.nn._passes import (
    Dims,
    _count,
    _leading_rows,
    _row_chunks,
    _rows_weighted_sum,
    _sum,
    _sum_of_squares,
    _sum_times_weight,
)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16/float32, float64 for float64: the dtype statistics run in."""
    return torch.promote_types(dtype, torch.float32)


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


def centered_stats(x: Tensor, stat_dims: Dims, eps: float) -> CenteredStats:
    """Corrected two-pass: m0 = mean(x), c = x - m0 (exact when x is near m0), then
    mean = m0 + mean(c) and var = mean(c^2) - mean(c)^2. The correction mean(c) removes m0's
    rounding error, which matters when |mean| >> std (float32 data far from zero); on the CPU
    this is also 10-30x faster than ``torch.var_mean``'s Welford loop."""
    count = _count(x, stat_dims)
    rough_mean = _sum(x, stat_dims) / count
    centered = x - rough_mean
    correction = _sum(centered, stat_dims) / count
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
    Written in differentiable torch ops: the double-backward path.
    """
    x_hat = (x - mean) * invstd
    g = grad_out * weight if weight is not None else grad_out
    projection = (g * x_hat).mean(dim=stat_dims, keepdim=True)
    return invstd * (g - g.mean(dim=stat_dims, keepdim=True) - x_hat * projection)


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
    ) -> tuple[Tensor, Tensor, Tensor]:
        xc = x.to(compute_dtype(x.dtype))
        wc = weight.to(xc.dtype) if weight is not None else None
        bc = bias.to(xc.dtype) if bias is not None else None
        chunks = _row_chunks(xc, stat_dims, param_dims)
        if len(chunks) == 1:
            y, stats = centered_normalize(xc, wc, bc, stat_dims, eps)
        elif 0 in stat_dims:  # BatchNorm
            y, stats = batch_norm_forward_chunked(xc, wc, bc, stat_dims, eps, chunks)
        else:
            y = torch.empty_like(xc)
            parts = [centered_normalize(xc[c], wc, bc, stat_dims, eps, y[c])[1] for c in chunks]
            stats = NormalizeStats(*(torch.cat(column) for column in zip(*parts, strict=True)))
        # the mean in two parts: x - rough_mean is exact near the mean, then - correction
        ctx.save_for_backward(x, weight, stats.rough_mean, stats.correction, stats.invstd)
        ctx.bias_like = torch.empty_like(bias, device="meta") if bias is not None else None
        ctx.stat_dims, ctx.param_dims, ctx.eps = stat_dims, param_dims, eps
        mean = stats.rough_mean + stats.correction
        ctx.mark_non_differentiable(mean, stats.var)
        return y.to(x.dtype), mean, stats.var

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, _grad_mean: Any, _grad_var: Any) -> tuple:
        x, weight, rough_mean, correction, invstd = ctx.saved_tensors
        xc = x.to(compute_dtype(x.dtype))
        wc = weight.to(xc.dtype) if weight is not None else None
        gc = grad_out.to(xc.dtype)
        stat_dims, param_dims = ctx.stat_dims, ctx.param_dims
        need_weight = weight is not None and ctx.needs_input_grad[1]
        need_bias = ctx.bias_like is not None and ctx.needs_input_grad[2]
        grad_weight = grad_bias = None
        if torch.is_grad_enabled():  # double backward: the formula, statistics as functions of x
            stats = centered_stats(xc, stat_dims, ctx.eps)
            mean, invstd = stats.mean, stats.invstd
            grad_x = centered_backward(gc, xc, wc, mean, invstd, stat_dims)
            if need_weight:
                grad_weight = _sum_to(gc * ((xc - mean) * invstd), param_dims, weight)
            if need_bias:
                grad_bias = _sum_to(gc, param_dims, ctx.bias_like)
            return grad_x.to(x.dtype), grad_weight, grad_bias, None, None, None
        chunks = _row_chunks(xc, stat_dims, param_dims)
        grad_x = scratch = None
        if len(chunks) > 1 and 0 in stat_dims:  # BatchNorm
            grads = batch_norm_backward_chunked(
                gc, xc, wc, rough_mean, correction, invstd, stat_dims, chunks
            )
            if need_weight:
                grad_weight = grads.grad_weight.reshape(weight.shape).to(weight.dtype)
            if need_bias:
                grad_bias = grads.grad_bias.reshape(ctx.bias_like.shape).to(ctx.bias_like.dtype)
            return grads.grad_input.to(x.dtype), grad_weight, grad_bias, None, None, None
        if len(chunks) > 1:  # one scratch buffer for x - rough_mean, reused: no page faults
            grad_x, scratch = torch.empty_like(xc), torch.empty_like(xc[chunks[0]])
        parts = [
            centered_backward_fused(
                gc[c], xc[c], wc, rough_mean[c], correction[c], invstd[c], stat_dims,
                param_dims, need_weight or need_bias,
                None if grad_x is None else grad_x[c],
                None if scratch is None else scratch[: xc[c].shape[0]],
            )
            for c in chunks
        ]  # fmt: skip
        if grad_x is None:
            grad_x = parts[0].grad_input
        if need_weight:
            grad_weight = sum(p.grad_weight for p in parts).reshape(weight.shape).to(weight.dtype)
        if need_bias:
            grad_bias = sum(p.grad_bias for p in parts)
            grad_bias = grad_bias.reshape(ctx.bias_like.shape).to(ctx.bias_like.dtype)
        return grad_x.to(x.dtype), grad_weight, grad_bias, None, None, None


def rms_stats(x: Tensor, stat_dims: Dims, eps: float) -> tuple[Tensor, Tensor]:
    """(mean of squares, invrms), each keeping the reduced dims as size 1."""
    mean_square = _sum_of_squares(x, stat_dims) / _count(x, stat_dims)
    return mean_square, torch.rsqrt(mean_square + eps)


def rms_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor | None, invrms: Tensor, stat_dims: Dims
) -> Tensor:
    """dL/dx of y = x * invrms * w:  dx = invrms * (g - x_hat * mean(g * x_hat)),  g = dy * w.
    Written in differentiable torch ops: the double-backward path."""
    x_hat = x * invrms
    g = grad_out * weight if weight is not None else grad_out
    return invrms * (g - x_hat * (g * x_hat).mean(dim=stat_dims, keepdim=True))


def rms_backward_fused(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor | None,
    invrms: Tensor,
    stat_dims: Dims,
    param_dims: Dims,
    need_weight_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """The same dx, first order, with one full-size allocation:
    dx = invrms * (dy * w + x * a),  a = -invrms^2 * mean(dy * w * x);  dw = sum(dy * x * invrms)
    over ``param_dims``."""
    dy_x = grad_out * x  # becomes grad_input
    grad_weight = None
    if need_weight_grad and weight is not None:
        if _leading_rows(x, stat_dims, param_dims):
            grad_weight = _rows_weighted_sum(dy_x, invrms, _count(x, stat_dims))
        else:
            grad_weight = _sum_to(dy_x * invrms, param_dims, weight)
    a = _sum_times_weight(dy_x, weight, stat_dims).mul_(invrms * invrms / -_count(x, stat_dims))
    grad_input = torch.mul(x, a, out=dy_x)
    if weight is not None:
        grad_input.addcmul_(grad_out, weight)
    else:
        grad_input.add_(grad_out)
    return grad_input.mul_(invrms), grad_weight


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
            y.mul_(weight.to(xc.dtype))
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
        need_weight = weight is not None and ctx.needs_input_grad[1]
        grad_weight = None
        if torch.is_grad_enabled():  # double backward: invrms as a function of x
            _, invrms = rms_stats(xc, ctx.stat_dims, ctx.eps)
            grad_x = rms_backward(gc, xc, wc, invrms, ctx.stat_dims)
            if need_weight:
                grad_weight = _sum_to(gc * xc * invrms, ctx.param_dims, weight)
        else:
            grad_x, grad_weight = rms_backward_fused(
                gc, xc, wc, invrms, ctx.stat_dims, ctx.param_dims, need_weight
            )
            if grad_weight is not None:
                grad_weight = grad_weight.reshape(weight.shape).to(weight.dtype)
        return grad_x.to(x.dtype), grad_weight, None, None, None
