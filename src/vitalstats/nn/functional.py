"""Normalisation functions with torch.nn.functional's argument order.

    batch_norm    statistics per channel C over (N, *spatial)     input (N, C, *)
    instance_norm statistics per (n, c) over *spatial              input (N, C, *)
    group_norm    statistics per (n, group) over (C / G, *spatial)  input (N, C, *)
    layer_norm    statistics per sample over the trailing ``normalized_shape`` dims
    rms_norm      root mean square over the trailing ``normalized_shape`` dims (no centring)

The maths, each backward beside its forward, lives in ``_batch_norm.py`` (BatchNorm and
InstanceNorm, which is BatchNorm of the (1, N * C, *) view), ``_rms_norm.py``, and for LayerNorm
and GroupNorm in ``_per_sample.py``; errors name the function, the tensor and the fix.

    >>> import torch, vitalstats as vs
    >>> x = torch.randn(8, 3, 4, 4)
    >>> rm, rv = torch.zeros(3), torch.ones(3)
    >>> y = vs.nn.functional.batch_norm(x, rm, rv, training=True)  # updates rm, rv in place
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from vitalstats.nn._batch_norm import batch_norm_training, batch_norm_training_updated
from vitalstats.nn._errors import check_float_input, check_param_shape, describe_shape
from vitalstats.nn._layout import compute_dtype
from vitalstats.nn._per_sample import group_norm_native, layer_norm_native
from vitalstats.nn._rms_norm import RMSNormFunction, rms_norm_reference
from vitalstats.stats.native import functorch_wrapped

__all__ = [
    "batch_norm",
    "batch_norm_statistics",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
    "update_running_stats",
]


def check_values_per_channel(input: Tensor, layer: str) -> None:
    """Training statistics need more than one value per channel."""
    values = input.numel() // max(input.shape[1], 1) if input.dim() >= 2 else input.numel()
    if values <= 1:
        raise ValueError(
            f"{layer}: expected more than 1 value per channel when training, got input of "
            f"shape {describe_shape(input)} (one value per channel, so the variance is "
            "undefined). Fix: call model.eval() for single-sample inference, or use LayerNorm "
            "or GroupNorm, whose statistics do not depend on the batch."
        )


def check_eps(eps: float, layer: str, training: bool) -> None:
    """torch's rule: eps > 0 with batch statistics (1 / sqrt(var + eps) stays finite for a
    constant channel), eps >= 0 with running statistics."""
    if training and not eps > 0:
        raise ValueError(
            f"{layer}: eps must be positive during training (batch statistics), got eps={eps}. "
            "Fix: use a small positive eps such as 1e-5 (the default)."
        )
    if not training and not eps >= 0:
        raise ValueError(
            f"{layer}: eps must be non-negative, got eps={eps} (sqrt(running_var + eps) would "
            "be NaN for small variances). Fix: use a small positive eps such as 1e-5."
        )


def batch_norm_statistics(
    input: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode BatchNorm: (y, batch mean (C,), biased batch var (C,)).

    mean_c = sum x / n and var_c = sum (x - mean_c)^2 / n over the n = N * prod(spatial)
    values of channel c; y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c, in the
    input's memory format. The statistics are detached and never synced to the host; float32
    for float32 parameters (also with half/bfloat16 input), else in the parameters' dtype, as
    torch's kernel computes them.
    """
    y, mean, var, _ = batch_norm_training(input, weight, bias, eps)
    return y, mean, var


def update_running_stats(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    batch_mean: Tensor,
    batch_var: Tensor,
    count: int | Tensor,
    momentum: float | Tensor,
    skip_nonfinite: bool = False,
) -> Tensor | None:
    """PyTorch's running-statistics update, in place:

        running_mean = (1 - momentum) * running_mean + momentum * batch_mean
        running_var  = (1 - momentum) * running_var  + momentum * batch_var * n / (n - 1)

    ``batch_var`` is the biased variance of ``count`` values per channel; the update uses the
    unbiased one (Bessel; a tensor ``count`` <= 1 gives NaN, which the guard skips). With
    ``skip_nonfinite`` a batch whose statistics hold a NaN/Inf leaves both buffers as they were;
    the returned 0-d bool tensor says whether the batch was finite (None without the check).
    """
    batch_mean, batch_var = batch_mean.detach(), batch_var.detach()
    if isinstance(count, Tensor):  # SyncBatchNorm: the group's count, no host sync
        unbiased = torch.where(count > 1, batch_var * count / (count - 1), torch.nan)
        unbiased = unbiased.to(batch_var.dtype)
    else:
        unbiased = batch_var * (count / max(count - 1, 1))
    finite = None
    if skip_nonfinite:  # a NaN/Inf anywhere makes the float64 sum non-finite: one flag
        total = batch_mean.sum(dtype=torch.float64) + unbiased.sum(dtype=torch.float64)
        finite = torch.isfinite(total)
    lerp_running_stats(running_mean, running_var, batch_mean, unbiased, momentum, finite)
    return finite


def finite_variance(unbiased_var: Tensor) -> Tensor:
    """0-d bool: no NaN/Inf in the (non-negative) variance, as max(var) < inf (amax propagates
    NaN). For batch statistics this is the whole non-finite check: the variance is computed
    from x - mean, so a NaN/Inf mean (a NaN/Inf input) always makes it NaN/Inf too."""
    return unbiased_var.amax() < math.inf


def lerp_running_stats(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    batch_mean: Tensor,
    unbiased_var: Tensor,
    momentum: float | Tensor,
    finite: Tensor | None = None,
) -> None:
    """``update_running_stats`` given the unbiased variance: running = lerp(running, batch,
    momentum), in the statistics' dtype (float32 for float32 and half buffers); where the 0-d
    ``finite`` is False the buffers keep their values. The statistics must not require grad."""
    if (  # the common case, one fused op
        finite is None
        and running_mean is not None
        and running_var is not None
        and not isinstance(momentum, Tensor)
        and running_mean.dtype == batch_mean.dtype == running_var.dtype == unbiased_var.dtype
    ):
        torch._foreach_lerp_([running_mean, running_var], [batch_mean, unbiased_var], momentum)
        return
    pairs = [
        (r, b)
        for r, b in ((running_mean, batch_mean), (running_var, unbiased_var))
        if r is not None
    ]
    if not pairs:
        return
    if not isinstance(momentum, Tensor) and all(r.dtype == b.dtype for r, b in pairs):
        if finite is not None and finite.device.type == "cpu":  # reading it costs nothing
            if not bool(finite):
                return
            finite = None
        # one fused lerp for both buffers; a skipped batch lerps each buffer to itself (exact)
        targets = [b if finite is None else torch.where(finite, b, r) for r, b in pairs]
        torch._foreach_lerp_([r for r, _ in pairs], targets, momentum)
        return
    for running, batch in pairs:  # buffers in another dtype (bfloat16 layers), momentum=None
        work = running.to(batch.dtype)
        weight = momentum.to(batch.dtype) if isinstance(momentum, Tensor) else momentum
        updated = torch.lerp(work, batch, weight)
        if finite is not None:
            updated = torch.where(finite, updated, work)
        running.copy_(updated)


def _check_per_channel(input: Tensor, function: str, *tensors: Tensor | None) -> None:
    """running_mean, running_var, weight, bias: each None or of shape (C,)."""
    names = ("running_mean", "running_var", "weight", "bias")
    for name, t in zip(names, tensors, strict=True):
        check_param_shape(t, (input.shape[1],), name, function, input)


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """BatchNorm over (N, C, *) input, like ``torch.nn.functional.batch_norm``.

    training: normalise with the batch mean and *biased* variance per channel and, when the
    running buffers are given, update them in place with ``momentum`` (PyTorch convention,
    see ``update_running_stats``) using the *unbiased* variance.
    not training: y = (x - running_mean) / sqrt(running_var + eps) * weight + bias.
    """
    check_float_input(input, "batch_norm", min_dims=2)
    _check_per_channel(input, "batch_norm", running_mean, running_var, weight, bias)
    check_eps(eps, "batch_norm", training)
    if training:
        check_values_per_channel(input, "batch_norm")
        if (
            running_mean is not None
            and running_var is not None
            and isinstance(momentum, int | float)
        ):
            updated = batch_norm_training_updated(
                input, weight, bias, eps, running_mean, running_var, float(momentum), False
            )
            if updated is not None:  # torch's kernel updated the buffers, as torch's would
                return updated[0]
        buffer_dtype = running_mean.dtype if running_mean is not None else None
        y, mean, _, unbiased = batch_norm_training(input, weight, bias, eps, buffer_dtype)
        lerp_running_stats(running_mean, running_var, mean, unbiased, momentum)
        return y
    if running_mean is None or running_var is None:
        raise ValueError(
            "batch_norm: running_mean and running_var are required when training=False "
            "(got None). Fix: pass the running buffers, or training=True to use batch statistics."
        )
    return normalize_with_running_stats(input, running_mean, running_var, weight, bias, eps)


def normalize_with_running_stats(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """Inference BatchNorm, an affine map per channel: y = x * scale + shift with
    scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale; torch's
    native inference kernel (its backward is the closed form of this linear map)."""
    if input.dtype in (torch.float32, torch.float64):  # parameters in another dtype: convert
        running_mean, running_var = running_mean.to(input.dtype), running_var.to(input.dtype)
        weight = weight.to(input.dtype) if weight is not None else None
        bias = bias.to(input.dtype) if bias is not None else None
    return torch.batch_norm(
        input, weight, bias, running_mean, running_var, False, 0.0, eps,
        torch.backends.cudnn.enabled,
    )  # fmt: skip


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """InstanceNorm over (N, C, *) input: statistics per (sample, channel) over the spatial
    dims, i.e. BatchNorm of the contiguous (1, N * C, *) view with the per-channel parameters
    repeated N times, as torch computes it (so the output is contiguous, like torch's). With
    running buffers and ``use_input_stats`` they get the batch-average of the per-instance
    means and unbiased variances. Half/bfloat16 input runs ``torch.instance_norm`` itself."""
    check_float_input(input, "instance_norm", min_dims=3)
    _check_per_channel(input, "instance_norm", running_mean, running_var, weight, bias)
    check_eps(eps, "instance_norm", use_input_stats)
    if use_input_stats and input[0, 0].numel() <= 1:
        raise ValueError(
            f"instance_norm: expected more than 1 spatial element per channel when training, got "
            f"input of shape {describe_shape(input)}. Fix: InstanceNorm needs a spatial "
            "extent; use BatchNorm or LayerNorm for (N, C, 1) inputs."
        )
    if compute_dtype(input.dtype) != input.dtype:  # half precision: torch's kernel outright,
        return torch.instance_norm(  # whose saved statistics are in the input dtype
            input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps,
            torch.backends.cudnn.enabled,
        )  # fmt: skip
    n, c = input.shape[:2]
    flat = input.contiguous().view(1, n * c, *input.shape[2:])  # (1, N * C, *)
    weight = weight.repeat(n) if weight is not None else None
    bias = bias.repeat(n) if bias is not None else None
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError(
                "instance_norm: use_input_stats=False needs running_mean and running_var "
                "(got None). Fix: construct the layer with track_running_stats=True."
            )
        y = normalize_with_running_stats(
            flat, running_mean.repeat(n), running_var.repeat(n), weight, bias, eps
        )
        return y.view(input.shape)
    y, mean, _, unbiased = batch_norm_training(flat, weight, bias, eps)
    if running_mean is not None or running_var is not None:  # torch: batch-average of instances
        lerp_running_stats(
            running_mean, running_var, mean.view(n, c).mean(0), unbiased.view(n, c).mean(0),
            momentum,
        )  # fmt: skip
    return y.view(input.shape)


def _normalized_dims(input: Tensor, normalized_shape: Sequence[int], fn: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in normalized_shape)
    check_float_input(input, fn, min_dims=len(shape))
    if tuple(input.shape[input.dim() - len(shape) :]) != shape or not shape:
        raise ValueError(
            f"{fn}: expected input with trailing dims {shape} (normalized_shape), got input of "
            f"shape {describe_shape(input)}. Fix: pass normalized_shape equal to the last "
            "dims of the input, e.g. normalized_shape=input.shape[-1:]."
        )
    return tuple(range(input.dim() - len(shape), input.dim()))


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """LayerNorm: mean and biased variance per sample over the trailing ``normalized_shape``
    dims; y = (x - mean) / sqrt(var + eps) * weight + bias, weight/bias of normalized_shape."""
    dims = _normalized_dims(input, normalized_shape, "layer_norm")
    shape = tuple(input.shape[dims[0] :])
    check_param_shape(weight, shape, "weight", "layer_norm", input)
    check_param_shape(bias, shape, "bias", "layer_norm", input)
    return layer_norm_native(input, shape, weight, bias, eps)


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """GroupNorm over (N, C, *) input: the C channels split into ``num_groups`` groups of
    C / G; mean and biased variance per (sample, group) over (C / G, *spatial); per-channel
    weight and bias."""
    check_float_input(input, "group_norm", min_dims=2)
    c = input.shape[1]
    if num_groups <= 0 or c % num_groups != 0:
        raise ValueError(
            f"group_norm: num_channels ({c}) must be divisible by num_groups ({num_groups}), "
            f"got input of shape {describe_shape(input)}. Fix: choose num_groups among the "
            f"divisors of {c}."
        )
    check_param_shape(weight, (c,), "weight", "group_norm", input)
    check_param_shape(bias, (c,), "bias", "group_norm", input)
    return group_norm_native(input, num_groups, weight, bias, eps)


def rms_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight over the trailing ``normalized_shape``
    dims. ``eps=None`` means the machine epsilon of the dtype the statistics run in, as torch's
    kernel does: float32's (1.19e-7) for float16/bfloat16 input, not the input dtype's (torch's
    docs say ``torch.finfo(x.dtype).eps``, which would be 9.8e-4 for float16). The output
    has the input's memory format, as torch's CPU composite gives it."""
    dims = _normalized_dims(input, normalized_shape, "rms_norm")
    check_param_shape(weight, tuple(input.shape[dims[0] :]), "weight", "rms_norm", input)
    if eps is None:
        eps = torch.finfo(compute_dtype(input.dtype)).eps
    if functorch_wrapped(input):  # torch.func grad/vmap: the differentiable formula, no Function
        return rms_norm_reference(input, dims, weight, eps).to(input.dtype)
    width = math.prod(input.shape[dims[0] :])
    rows = input.reshape(-1, width)  # a view when contiguous
    flat_weight = weight.reshape(width) if weight is not None else None
    y = RMSNormFunction.apply(rows, flat_weight, eps).view(input.shape)
    if not input.is_contiguous():  # torch's elementwise composite keeps the input's layout
        y = torch.empty_like(input, dtype=y.dtype).copy_(y)
    return y
