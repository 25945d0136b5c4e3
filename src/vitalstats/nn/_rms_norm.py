"""RMSNorm's maths, forward and backward side by side.

Over the trailing D = prod(normalized_shape) values of each row:

    invrms = 1 / sqrt(mean(x^2) + eps),   x_hat = x * invrms,   y = x_hat * w

Backward (``rms_norm_backward``), with g = dy * w:

    dx = invrms * (g - x_hat * mean(g * x_hat)),   dw = sum over rows of dy * x_hat

The forward runs torch's fused kernel ``torch._fused_rms_norm`` (CPU and CUDA; it returns
invrms). torch has no CPU kernel for the backward, and ``torch.nn.RMSNorm``'s CPU backward is
autograd through five composite ops, so ours is the formula itself, arranged to allocate one
full-size buffer (``_fused_backward``), checked in tests against ``rms_norm_backward``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vitalstats.nn._layout import compute_dtype

__all__ = ["RMSNormFunction", "rms_norm_backward", "rms_norm_reference"]


def rms_norm_reference(
    x: Tensor, dims: tuple[int, ...], weight: Tensor | None, eps: float
) -> Tensor:
    """y = x / sqrt(mean(x^2) + eps) * w, differentiable, in the compute dtype."""
    xc = x.to(compute_dtype(x.dtype))
    y = xc * torch.rsqrt(xc.square().mean(dims, keepdim=True) + eps)
    return y * weight.to(xc.dtype) if weight is not None else y


def rms_norm_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor | None, invrms: Tensor, dims: tuple[int, ...]
) -> Tensor:
    """dL/dx of y = x * invrms * w: dx = invrms * (g - x_hat * mean(g * x_hat)), g = dy * w.

    Derivation: invrms = (mean(x^2) + eps)^(-1/2), so d x_hat_i / d x_j =
    invrms * (delta_ij - x_hat_i * x_hat_j / D). ``invrms`` keeps the reduced dims as size 1.
    Differentiable ops only: what double backward differentiates."""
    x_hat = x * invrms
    g = grad_out * weight if weight is not None else grad_out
    return invrms * (g - x_hat * (g * x_hat).mean(dims, keepdim=True))


def _fused_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor | None, invrms: Tensor, need_weight: bool
) -> tuple[Tensor, Tensor | None]:
    """``rms_norm_backward`` and dw for rows (M, D), first order, one full-size allocation:
    dx = invrms * (dy * w + x * a) with a = -invrms^2 * mean(dy * w * x) per row, and
    dw = sum_rows(dy * x * invrms), a transposed matrix-vector product."""
    rows, width = invrms.numel(), x.shape[-1]
    dy_x = grad_out * x  # (M, D), becomes grad_input
    invrms = invrms.reshape(rows, 1)
    grad_weight = dy_x.T @ invrms.reshape(rows) if need_weight else None
    row_sums = dy_x @ weight if weight is not None else dy_x.sum(1)
    a = row_sums.reshape(rows, 1).mul_(invrms * invrms / -width)
    grad_input = torch.mul(x, a, out=dy_x)
    if weight is not None:
        grad_input.addcmul_(grad_out, weight)
    else:
        grad_input.add_(grad_out)
    return grad_input.mul_(invrms), grad_weight


class RMSNormFunction(torch.autograd.Function):
    """y = x / sqrt(mean(x^2) + eps) * w over the trailing ``width`` values (x given as rows
    (M, D), weight (D,) or None). Saves x, the weight and invrms (M, 1)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor | None, eps: float
    ) -> Tensor:
        if x.device.type in ("cpu", "cuda"):
            y, invrms = torch._fused_rms_norm(x, [x.shape[-1]], weight, eps)
        else:
            xc = x.to(compute_dtype(x.dtype))
            invrms = torch.rsqrt(xc.square().mean(-1, keepdim=True) + eps)
            y = rms_norm_reference(x, (-1,), weight, eps).to(x.dtype)
        ctx.save_for_backward(x, weight, invrms)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple:
        x, weight, invrms = ctx.saved_tensors
        dtype = compute_dtype(x.dtype)
        xc, gc = x.to(dtype), grad_out.to(dtype)
        wc = weight.to(dtype) if weight is not None else None
        need_weight = weight is not None and ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # double backward: invrms as a function of x
            invrms = torch.rsqrt(xc.square().mean(-1, keepdim=True) + ctx.eps)
            grad_input = rms_norm_backward(gc, xc, wc, invrms, (-1,))
            grad_weight = (gc * xc * invrms).sum(0) if need_weight else None
        else:
            grad_input, grad_weight = _fused_backward(gc, xc, wc, invrms.to(dtype), need_weight)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_input.to(x.dtype), grad_weight, None
