"""BatchNorm's maths, forward and backward side by side, and the kernels that run it.

Per channel c of an (N, C, *) input, over its n = N * prod(spatial) values:

    mean = sum(x) / n,   var = sum((x - mean)^2) / n   (biased),   invstd = 1 / sqrt(var + eps)
    y    = (x - mean) * invstd * w + b

Backward (``batch_norm_backward``, the one formula; SyncBatchNorm passes group-wide sums):

    dx = w * invstd * (dy - sum(dy) / n - x_hat * sum(dy * x_hat) / n),   x_hat = (x - mean) * invstd
    dw = sum(dy * x_hat),   db = sum(dy)

``batch_norm_reference`` writes the forward in plain differentiable ops: with the formula above
it is the oracle the kernels are tested against (tests/nn/test_batch_norm_maths.py) and what
double backward differentiates. What runs (``batch_norm_training``):

* torch's fused training kernel with autograd (its C++ backward node). A layer's running
  buffers go in with the layer's momentum (``batch_norm_training_updated``): they come out
  updated as torch's would be, bit for bit; a guarded layer snapshots them first and restores
  them when the batch was non-finite. Elsewhere (no buffers, an accelerator, torch.func,
  momentum=None on a device count) the kernel gets scratch ones with momentum 1, so that it
  also returns the exact unbiased variance (sum((x - mean)^2) / (n - 1), as torch computes it
  for its running_var) for ``lerp_running_stats``. Dtypes are the layer's, as in torch:
  float32 statistics for float32 layers (also with half-precision input: torch's
  mixed-precision kernel), the input dtype's for a layer converted to half;
* for float32/float64 channels-first (NCHW-contiguous) CPU input with a spatial extent, the
  corrected two-pass statistics of ``_centered_moments`` (``BatchNormFunction``): torch's
  kernel runs a scalar float64 loop over that layout, 5-10x slower; the backward is torch's
  native kernel;
* for float32 CPU input of at least 2^21 values whose channels are the contiguous dim
  ((N, C), channels-last), the C kernels of ``vitalstats.stats.native``
  (``BatchNormFunction`` again): statistics from float64 sums and the formulas above,
  forward and backward in two passes each, 5-40x closer to float64 than torch's kernel and
  about 10 % faster at that size; used where those kernels are built and take the tensor
  (``native.supports``: one torch thread), torch's kernel otherwise. Smaller inputs keep
  torch's kernel: there a Python autograd.Function costs more than the kernels save.

Statistics are never formed as E[x^2] - E[x]^2.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from vitalstats.nn._layout import channel_view, channels_contiguous, compute_dtype, reduced_dims
from vitalstats.stats import native

__all__ = [
    "BatchNormFunction",
    "batch_norm_backward",
    "batch_norm_gradient_sums",
    "batch_norm_reference",
    "batch_norm_training",
    "batch_norm_training_updated",
    "batch_statistics",
    "kernel_update",
    "normalize",
    "restore_running_stats",
    "variance_from_invstd",
]


def batch_norm_reference(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, biased var) straight from the definition, differentiable, in x's dtype."""
    dims = reduced_dims(x)
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * channel_view(weight, x.dim())
    if bias is not None:
        y = y + channel_view(bias, x.dim())
    return y, mean.reshape(-1), var.reshape(-1)


def batch_norm_backward(
    grad_out: Tensor,
    input: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    sum_dy: Tensor,
    sum_dy_xhat: Tensor,
    count: int | Tensor,
) -> Tensor:
    """dL/dx of BatchNorm: dx = k * (dy - sum(dy) / n - x_hat * sum(dy * x_hat) / n), k = w * invstd.

    Derivation: x_hat = (x - mean) * invstd with mean and var over the n values of a channel,
    so d x_hat_i / d x_j = invstd * (delta_ij - 1/n - x_hat_i * x_hat_j / n); dx = w dy . that.
    Computed as dx = k * dy - a * (x - mean) + offset with per-channel a = k * invstd *
    sum(dy x_hat) / n and offset = -k * sum(dy) / n (x - mean first: no cancellation when
    |mean| >> std). ``mean``, ``invstd`` and the sums are (C,); the sums may cover more than
    this input (SyncBatchNorm: all ranks, with ``count`` the group's n). Under autograd (double
    backward) plain ops; otherwise in place in the centred buffer, three passes over memory.
    """
    ndim = input.dim()
    k = invstd * weight if weight is not None else invstd
    a = k * invstd * sum_dy_xhat / count
    offset = -k * sum_dy / count
    a, k, offset = channel_view(a, ndim), channel_view(k, ndim), channel_view(offset, ndim)
    centered = input - channel_view(mean, ndim)
    if torch.is_grad_enabled():
        return k * grad_out - a * centered + offset
    if channels_contiguous(input):  # coefficients vary along memory rows: addcmul is fastest
        return torch.addcmul(offset, centered, -a, out=centered).addcmul_(grad_out, k)
    return centered.mul_(-a).add_(offset).addcmul_(grad_out, k)


def _reference_backward(
    grad_out: Tensor, x: Tensor, weight: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dw, db) with the statistics recomputed from x in differentiable ops (double
    backward); in the compute dtype."""
    dims = reduced_dims(x)
    _, mean, var = batch_norm_reference(x, None, None, eps)
    invstd = torch.rsqrt(var + eps)
    x_hat = (x - channel_view(mean, x.dim())) * channel_view(invstd, x.dim())
    sum_dy, sum_dy_xhat = grad_out.sum(dims), (grad_out * x_hat).sum(dims)
    count = x.numel() // x.shape[1]
    grad_input = batch_norm_backward(grad_out, x, weight, mean, invstd, sum_dy, sum_dy_xhat, count)
    return grad_input, sum_dy_xhat, sum_dy


def _centered_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Corrected two-pass moments of channels-first contiguous x seen as (N, C, S):
    (buffer, c, rough_mean, correction, var) with c = x - rough_mean, the (N, C, S) view of a
    new buffer shaped like x, and all statistics (1, C, 1).

    m0 = rough mean, c = x - m0, then mean = m0 + mean(c) and var = mean(c^2) - mean(c)^2:
    the correction mean(c) removes m0's rounding and nothing cancels because c is centred.
    Sums run along the contiguous rows first (S, then N)."""
    rows = x.reshape(x.shape[0], x.shape[1], -1)  # (N, C, S), a view
    count = rows.shape[0] * rows.shape[2]
    rough_mean = rows.sum(2, keepdim=True).sum(0, keepdim=True) / count
    buffer = torch.empty_like(x)  # returned whole by the caller: not a view
    centered = torch.sub(rows, rough_mean, out=buffer.view(rows.shape))
    correction = centered.sum(2, keepdim=True).sum(0, keepdim=True) / count
    row_norms = torch.linalg.vector_norm(centered, dim=2, keepdim=True)  # no c^2 temporary
    sum_squares = row_norms.square_().sum(0, keepdim=True)
    var = (sum_squares / count - correction * correction).clamp_(min=0.0)
    return buffer, centered, rough_mean, correction, var


# Below this many values the C kernels' Python autograd.Function costs more than they save
# against torch's kernel and its C++ autograd node (one thread, fwd+bwd: (256, 1024) 1.25x
# against 1.15x through torch's kernel; (4096, 1024) 0.92x against 1.02x).
_ROWS_MIN_VALUES = 1 << 21


def _rows_cpu(x: Tensor) -> bool:
    """float32 CPU input laid out as (rows, C) in memory ((N, C), (N, C, 1, ...) or
    channels-last), large enough to gain from the C kernels, that they take."""
    return (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.numel() >= _ROWS_MIN_VALUES
        and channels_contiguous(x)
        and native.supports(x)
        and native.library() is not None
    )


def _channels_first_cpu(x: Tensor) -> bool:
    """float32/float64 NCHW-contiguous CPU input with a spatial extent, outside torch.func
    transforms (``BatchNormFunction`` has no vmap rule; torch's kernel has them all)."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.is_contiguous()
        and not channels_contiguous(x)
        and not native.functorch_wrapped(x)
    )


def _two_pass_training(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, mean, var, unbiased var, invstd) by ``_centered_moments``, y = c * scale + shift
    written in place in the centred buffer. No autograd."""
    y, centered, rough_mean, correction, var = _centered_moments(x)
    invstd = torch.rsqrt(var + eps)
    scale = invstd * weight.reshape(1, -1, 1) if weight is not None else invstd
    shift = -correction * scale
    if bias is not None:
        shift = shift + bias.reshape(1, -1, 1)
    centered.mul_(scale).add_(shift)
    count = x.numel() // x.shape[1]
    var = var.reshape(-1)
    mean = (rough_mean + correction).reshape(-1)
    return y, mean, var, var * (count / (count - 1)), invstd.reshape(-1)


def _native_training(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, stats_dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, mean, var, unbiased var, invstd) from torch's training kernel; scratch running
    buffers (zeros in ``stats_dtype``, momentum 1) receive mean and unbiased var, the layer's
    are untouched. Differentiable in x, weight, bias (torch's C++ backward node). Under
    torch.func's vmap the scratch buffers would be unbatched: there the kernel runs without
    them and the variance comes from ``torch.var`` in ``stats_dtype``."""
    count = x.numel() // x.shape[1]
    if native.functorch_wrapped(x):
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        with torch.no_grad():
            var = torch.var(x.detach().to(stats_dtype), reduced_dims(x), correction=0)
        return y, mean.detach(), var, var * (count / max(count - 1, 1)), invstd
    channels = x.shape[1]  # two allocations cost less than one and an unbind
    scratch_mean = torch.zeros(channels, dtype=stats_dtype, device=x.device)
    unbiased = torch.zeros(channels, dtype=stats_dtype, device=x.device)
    y, mean, invstd = torch.native_batch_norm(
        x, weight, bias, scratch_mean, unbiased, True, 1.0, eps
    )
    return y, mean, unbiased * ((count - 1) / count), unbiased, invstd


def batch_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, biased var) per channel, (C,) each in the compute dtype, no autograd."""
    if _channels_first_cpu(x):
        _, _, rough_mean, correction, var = _centered_moments(x)
        return (rough_mean + correction).reshape(-1), var.reshape(-1)
    scratch = None  # half precision: float32 buffers (momentum 0) select float32 statistics
    if compute_dtype(x.dtype) != x.dtype:
        scratch = torch.zeros(x.shape[1], dtype=compute_dtype(x.dtype), device=x.device)
    return torch.batch_norm_update_stats(x, scratch, scratch, 0.0)


def normalize(
    x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """y = (x - mean) / sqrt(var + eps) * w + b with given (C,) statistics (compute dtype),
    by torch's native inference kernel: x's dtype and memory format. No autograd."""
    return torch.native_batch_norm(x, weight, bias, mean, var, False, 0.0, eps)[0]


def batch_norm_training(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    buffer_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training BatchNorm: (y, mean, biased var, unbiased var), the statistics (C,) detached,
    y in x's dtype and memory format, differentiable.

    Half/bfloat16 input runs torch's kernel with the layer's own dtypes, as torch does: float32
    parameters/buffers (``buffer_dtype``) select its mixed-precision kernel with float32
    statistics; a layer converted to half precision gets statistics in that dtype."""
    channels_first = _channels_first_cpu(x)
    rows = not channels_first and _rows_cpu(x)
    if rows or channels_first:
        y, mean, var, unbiased = BatchNormFunction.apply(x, weight, bias, eps, rows)
        return y, mean, var, unbiased
    weight, bias, stats_dtype = _native_operands(x, weight, bias, buffer_dtype)
    y, mean, var, unbiased, _ = _native_training(x, weight, bias, eps, stats_dtype)
    return y, mean, var, unbiased


def batch_norm_training_updated(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    running_mean: Tensor,
    running_var: Tensor,
    momentum: float,
    keep_previous: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None] | None:
    """Training BatchNorm whose running-buffer update is torch's own CPU kernel's, in place, so
    the buffers come out as a torch layer's would, bit for bit (its float32 rounding, which no
    lerp reproduces): ``kernel_update``'s (y, mean, invstd, previous buffers). None, with
    nothing touched, where ``batch_norm_training`` (and a lerp of the buffers) must run
    instead: input the two-pass or row kernels take, an accelerator, torch.func, eps <= 0,
    buffers in another dtype than the statistics."""
    if x.device.type != "cpu" or not eps > 0 or native.functorch_wrapped(x):
        return None
    if _channels_first_cpu(x) or _rows_cpu(x):
        return None
    weight, bias, stats_dtype = _native_operands(x, weight, bias, running_mean.dtype)
    if running_mean.dtype != stats_dtype or running_var.dtype != stats_dtype:
        return None
    return kernel_update(x, weight, bias, eps, running_mean, running_var, momentum, keep_previous)


def kernel_update(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    running_mean: Tensor,
    running_var: Tensor,
    momentum: float,
    keep_previous: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """torch's training kernel updating the running buffers in place, as torch's layer does:
    (y, mean, invstd, previous), the statistics (C,) without autograd, ``previous`` the
    buffers' values before the update as a (2, C) tensor if ``keep_previous`` (to restore
    them, ``restore_running_stats``), else None. No checks: the operands are the kernel's
    (``batch_norm_training_updated`` decides)."""
    previous = _snapshot(running_mean, running_var) if keep_previous else None
    y, mean, invstd = torch.native_batch_norm(
        x, weight, bias, running_mean, running_var, True, momentum, eps
    )
    return y, mean, invstd, previous


def _snapshot(running_mean: Tensor, running_var: Tensor) -> Tensor:
    """(2, C): running_mean and running_var, copied (one C call for CPU buffers, outside
    torch.compile's tracing)."""
    lib = None if torch.compiler.is_compiling() else native.library()
    channels, dtype = running_mean.numel(), running_mean.dtype
    if (
        lib is not None
        and running_var.dtype is dtype
        and running_mean.is_cpu
        and running_var.is_cpu
        and running_var.numel() == channels
        and running_mean.is_contiguous()
        and running_var.is_contiguous()
    ):
        out = running_mean.new_empty((2, channels))
        lib.vs_copy_pair(running_mean.data_ptr(), running_var.data_ptr(),
                         channels * running_mean.element_size(), out.data_ptr())  # fmt: skip
        return out
    return torch.stack([running_mean.detach(), running_var.detach()])


def restore_running_stats(running_mean: Tensor, running_var: Tensor, previous: Tensor) -> None:
    """Undo ``kernel_update``'s in-place update of the buffers from its ``previous``. Written
    through ``.data``, as the kernel writes them, without a version bump: its backward node
    saved the buffers (a training backward never reads them), and a bump would fail it."""
    torch._foreach_copy_([running_mean.data, running_var.data], list(previous.unbind(0)))


def variance_from_invstd(
    invstd: Tensor, eps: float, require_finite: bool, count: Tensor | None
) -> tuple[Tensor, bool]:
    """(biased variance, finite) from torch's saved invstd = 1 / sqrt(var + eps):
    var = invstd^-2 - eps, clamped at 0, within a few ulps of (var + eps) and NaN/Inf where the
    variance was; float32, computed in invstd's dtype. ``finite``: whether every value is
    (True without ``require_finite``); when it is, ``count`` (num_batches_tracked, or None)
    gains 1. One C call for a float32 or bfloat16 CPU invstd outside torch.compile's tracing
    (the same rounding as the ATen ops of the fallback, bit for bit)."""
    lib = None if torch.compiler.is_compiling() else native.library()
    dtype = invstd.dtype
    if (
        lib is not None
        and (dtype is torch.float32 or dtype is torch.bfloat16)
        and invstd.is_cpu
        and invstd.is_contiguous()
        and (count is None or (count.dtype is torch.int64 and count.is_cpu))
    ):
        var = torch.empty_like(invstd, dtype=torch.float32)
        finite = lib.vs_batch_norm_variance_from_invstd(
            invstd.data_ptr(), native.DTYPE_CODES[dtype], invstd.numel(), eps, require_finite,
            var.data_ptr(), None if count is None else count.data_ptr(),
        )  # fmt: skip
        return var, bool(finite)
    var = invstd.detach().pow(-2).sub_(eps).clamp_min_(0).float()
    finite = not require_finite or math.isfinite(var.amax().item())  # amax propagates NaN
    if finite and count is not None:
        count.add_(1)
    return var, finite


def _native_operands(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, buffer_dtype: torch.dtype | None
) -> tuple[Tensor | None, Tensor | None, torch.dtype]:
    """(weight, bias, statistics dtype) for torch's kernel: x's dtype for float32/float64 input
    (parameters converted, differentiably); for half precision the layer's dtype if it is x's,
    else float32 (torch's mixed-precision kernel)."""
    if x.dtype in (torch.float32, torch.float64):
        stats_dtype = x.dtype
        if weight is not None and weight.dtype != stats_dtype:
            weight = weight.to(stats_dtype)
        if bias is not None and bias.dtype != stats_dtype:
            bias = bias.to(stats_dtype)
        return weight, bias, stats_dtype
    param = weight if weight is not None else bias
    stats_dtype = param.dtype if param is not None else (buffer_dtype or x.dtype)
    if stats_dtype != x.dtype:
        stats_dtype = compute_dtype(x.dtype)
        weight = weight.to(stats_dtype) if weight is not None else None
        bias = bias.to(stats_dtype) if bias is not None else None
    return weight, bias, stats_dtype


def batch_norm_gradient_sums(
    grad_out: Tensor, x: Tensor, mean: Tensor, invstd: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """(sum(dy), sum(dy * x_hat)) per channel, (C,) in the compute dtype, by torch's fused
    backward reduction (zeros for an empty input, where that kernel is undefined)."""
    if x.numel() == 0:
        zeros = torch.zeros_like(mean)
        return zeros, zeros.clone()
    _, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
        grad_out, x, None, None, None, mean, invstd, True, eps, [False, True, True]
    )
    return sum_dy, sum_dy_xhat


class BatchNormFunction(torch.autograd.Function):
    """Training BatchNorm for float32/float64 channels-first CPU input (two-pass statistics
    forward, torch's native backward) and float32 CPU input laid out as rows of channels (the
    C kernels both ways, ``native.batch_norm_rows_*``). Returns (y, mean, var, unbiased var);
    the statistics are non-differentiable outputs (their dependence on x is inside the
    backward formula). Saves x, the weight, mean and invstd: no more than torch's kernel
    keeps. Double backward differentiates the reference formula."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, rows: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        weight_c = weight.to(x.dtype) if weight is not None else None
        bias_c = bias.to(x.dtype) if bias is not None else None
        ctx.rows = rows  # the C row kernels, else the channels-first two-pass path
        if rows:
            y, mean, var, unbiased, invstd = native.batch_norm_rows_forward(
                x, _dense(weight_c), _dense(bias_c), eps
            )
        else:
            y, mean, var, unbiased, invstd = _two_pass_training(x, weight_c, bias_c, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.mark_non_differentiable(mean, var, unbiased)
        return y, mean, var, unbiased

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, *_grad_statistics: Any) -> tuple:
        x, weight, mean, invstd = ctx.saved_tensors
        dtype = compute_dtype(x.dtype)
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        weight_c = weight.to(dtype) if weight is not None else None
        if torch.is_grad_enabled():  # double backward: the formula, statistics as functions of x
            grad_input, grad_weight, grad_bias = _reference_backward(
                grad_out.to(dtype), x.to(dtype), weight_c, ctx.eps
            )
            grad_input = grad_input.to(x.dtype)
        elif ctx.rows:
            if grad_out.stride() != x.stride():  # the kernels read both as the same rows
                grad_out = torch.empty_like(x).copy_(grad_out)
            grad_input, grad_weight, grad_bias = native.batch_norm_rows_backward(
                grad_out, x, mean, invstd, _dense(weight_c), (need_input, need_weight, need_bias)
            )
        else:
            grad_input, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                grad_out, x, weight_c, None, None, mean, invstd, True, ctx.eps,
                [need_input, need_weight or need_bias, need_weight or need_bias],
            )  # fmt: skip
        grad_input = grad_input if need_input else None
        grad_weight = grad_weight.to(weight.dtype) if need_weight else None
        grad_bias = grad_bias.to(ctx.bias_dtype) if need_bias else None
        return grad_input, grad_weight, grad_bias, None, None


def _dense(t: Tensor | None) -> Tensor | None:
    """A (C,) parameter as the C kernels read it: contiguous, no autograd."""
    return None if t is None else t.detach().contiguous()
