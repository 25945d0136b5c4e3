"""Reference normalisation functions with torch.nn.functional's argument order.

Each is a ``torch.autograd.Function`` with a closed-form backward (see ``_autograd.py``):

    batch_norm   statistics per channel C over (N, *spatial)     input (N, C, *)
    instance_norm statistics per (n, c) over *spatial              input (N, C, *)
    group_norm   statistics per (n, group) over (C / G, *spatial)  input (N, C, *)
    layer_norm   statistics per sample over the trailing ``normalized_shape`` dims
    rms_norm     root mean square over the trailing ``normalized_shape`` dims (no centring)

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

from vitalstats.nn._autograd import CenteredNormFunction, RMSNormFunction, compute_dtype
from vitalstats.nn._errors import check_float_input, check_param_shape, describe_shape

__all__ = [
    "batch_norm",
    "batch_norm_statistics",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
    "update_running_stats",
]


def _channel_view(t: Tensor | None, ndim: int) -> Tensor | None:
    """(C,) -> (1, C, 1, ..., 1) so it broadcasts against an (N, C, *) input."""
    return None if t is None else t.reshape((1, -1) + (1,) * (ndim - 2))


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


def check_positive_eps(eps: float, layer: str) -> None:
    """Training needs eps > 0 (torch's rule): it keeps 1 / sqrt(var + eps) finite when a
    channel is constant."""
    if not eps > 0:
        raise ValueError(
            f"{layer}: eps must be positive when training with batch statistics, got eps={eps}. "
            "Fix: use a small positive eps such as 1e-5 (the default)."
        )


def batch_norm_statistics(
    input: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Training-mode BatchNorm: (y, batch mean (C,), biased batch var (C,)).

    mean_c = sum x / n and var_c = sum (x - mean_c)^2 / n over the n = N * prod(spatial)
    values of channel c; y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c.
    The statistics are float32 for half/bfloat16 input, detached, and never synced to the host.
    """
    num_channels = input.shape[1]
    if input.dim() == 2:  # (N, C): stats per column
        y, mean, var = CenteredNormFunction.apply(
            input, _channel_view(weight, 2), _channel_view(bias, 2), (0,), (0,), eps
        )
        return y, mean.reshape(-1), var.reshape(-1)
    channels_last = input.movedim(1, -1)  # (N, *spatial, C)
    if channels_last.is_contiguous() and not input.is_contiguous():
        rows = channels_last.reshape(-1, num_channels)  # (N * spatial, C), a view: stats per column
        y, mean, var = CenteredNormFunction.apply(
            rows, _channel_view(weight, 2), _channel_view(bias, 2), (0,), (0,), eps
        )
        y = y.reshape(channels_last.shape).movedim(-1, 1)
    elif input.is_contiguous():  # (N, C, S), a view: stats over N and the rows of S
        flat = input.reshape(input.shape[0], num_channels, -1)
        y, mean, var = CenteredNormFunction.apply(
            flat, _channel_view(weight, 3), _channel_view(bias, 3), (0, 2), (0, 2), eps
        )
        y = y.reshape(input.shape)
    else:  # other strides: reduce over the original dims
        dims = (0, *range(2, input.dim()))
        ndim = input.dim()
        y, mean, var = CenteredNormFunction.apply(
            input, _channel_view(weight, ndim), _channel_view(bias, ndim), dims, dims, eps
        )
    return y, mean.reshape(-1), var.reshape(-1)


def update_running_stats(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    batch_mean: Tensor,
    batch_var: Tensor,
    count: int,
    momentum: float | Tensor,
    skip_nonfinite: bool = False,
) -> Tensor | None:
    """PyTorch's running-statistics update, in place, computed in float64:

        running_mean = (1 - momentum) * running_mean + momentum * batch_mean
        running_var  = (1 - momentum) * running_var  + momentum * batch_var * n / (n - 1)

    ``batch_var`` is the biased variance; the update uses the unbiased one (Bessel). With
    ``skip_nonfinite`` a batch whose statistics hold a NaN/Inf leaves both buffers as they were;
    the returned 0-d bool tensor says whether the batch was finite (None without the check).
    """
    bessel = count / max(count - 1, 1)
    finite = None
    if skip_nonfinite:  # a NaN/Inf anywhere makes the float64 sum non-finite: one flag
        total = batch_mean.detach().sum(dtype=torch.float64)
        finite = torch.isfinite(total + batch_var.detach().sum(dtype=torch.float64))
    for running, batch, factor in (
        (running_mean, batch_mean, 1.0),
        (running_var, batch_var, bessel),
    ):
        if running is None:
            continue
        old = running.double()
        batch64 = batch.detach().double()
        if isinstance(momentum, Tensor):
            updated = old * (1 - momentum) + batch64 * (momentum * factor)
        else:
            updated = torch.add(old * (1 - momentum), batch64, alpha=momentum * factor)
        if finite is not None:
            updated = torch.where(finite, updated, old)
        running.copy_(updated)
    return finite


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
    if training:
        check_values_per_channel(input, "batch_norm")
        check_positive_eps(eps, "batch_norm")
        y, mean, var = batch_norm_statistics(input, weight, bias, eps)
        count = input.numel() // input.shape[1]
        update_running_stats(running_mean, running_var, mean, var, count, momentum)
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
    scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale.
    Linear in x, so autograd of these two ops is already the closed form."""
    dtype = compute_dtype(input.dtype)
    scale = torch.rsqrt(running_var.to(dtype) + eps)
    if weight is not None:
        scale = scale * weight.to(dtype)
    shift = -running_mean.to(dtype) * scale
    if bias is not None:
        shift = shift + bias.to(dtype)
    ndim = input.dim()
    return torch.addcmul(
        _channel_view(shift, ndim), input.to(dtype), _channel_view(scale, ndim)
    ).to(input.dtype)


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
    dims. With running buffers and ``use_input_stats``, they are updated (as torch does) with
    the batch-average of the per-instance means and unbiased variances."""
    check_float_input(input, "instance_norm", min_dims=3)
    _check_per_channel(input, "instance_norm", running_mean, running_var, weight, bias)
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError(
                "instance_norm: use_input_stats=False needs running_mean and running_var "
                "(got None). Fix: construct the layer with track_running_stats=True."
            )
        return normalize_with_running_stats(input, running_mean, running_var, weight, bias, eps)
    spatial = input[0, 0].numel()
    if spatial <= 1:
        raise ValueError(
            f"instance_norm: expected more than 1 spatial element per channel, got input of "
            f"shape {describe_shape(input)}. Fix: InstanceNorm needs a spatial extent; use "
            "BatchNorm or LayerNorm for (N, C, 1) inputs."
        )
    n, c = input.shape[:2]
    flat = input.reshape(n, c, spatial)  # (N, C, S): statistics per row
    y, mean, var = CenteredNormFunction.apply(
        flat, _channel_view(weight, 3), _channel_view(bias, 3), (2,), (0, 2), eps
    )
    y = y.reshape(input.shape)
    if running_mean is not None or running_var is not None:  # torch: batch-average of instances
        instance_mean, instance_var = mean.reshape(n, c).mean(0), var.reshape(n, c).mean(0)
        update_running_stats(
            running_mean, running_var, instance_mean, instance_var, spatial, momentum
        )
    return y


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
    if input.is_contiguous():  # (rows, *normalized_shape), a view: rows chunk cleanly
        rows = input.reshape(-1, *shape) if dims[0] > 0 else input.unsqueeze(0)
        flat_dims = tuple(range(1, rows.dim()))
        y, _, _ = CenteredNormFunction.apply(rows, weight, bias, flat_dims, (0,), eps)
        return y.reshape(input.shape)
    batch_dims = tuple(range(dims[0]))
    y, _, _ = CenteredNormFunction.apply(input, weight, bias, dims, batch_dims, eps)
    return y


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
    n, c = input.shape[:2]
    if num_groups <= 0 or c % num_groups != 0:
        raise ValueError(
            f"group_norm: num_groups={num_groups} must divide the number of channels, got "
            f"input of shape {describe_shape(input)} with C={c}. Fix: choose num_groups among "
            f"the divisors of {c}."
        )
    check_param_shape(weight, (c,), "weight", "group_norm", input)
    check_param_shape(bias, (c,), "bias", "group_norm", input)
    spatial = math.prod(input.shape[2:])
    grouped = input.reshape(n, num_groups, c // num_groups, spatial)  # (N, G, C/G, S)

    def param_view(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.reshape(num_groups, c // num_groups, 1)

    y, _, _ = CenteredNormFunction.apply(
        grouped, param_view(weight), param_view(bias), (2, 3), (0, 3), eps
    )
    return y.reshape(input.shape)


def rms_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight over the trailing ``normalized_shape``
    dims. ``eps=None`` means the machine epsilon of the dtype the statistics run in, as torch's
    kernel does: float32's (1.19e-7) for float16/bfloat16 input, not the input dtype's (torch's
    docs say ``torch.finfo(x.dtype).eps``, which would be 9.8e-4 for float16)."""
    dims = _normalized_dims(input, normalized_shape, "rms_norm")
    check_param_shape(weight, tuple(input.shape[dims[0] :]), "weight", "rms_norm", input)
    if eps is None:
        eps = torch.finfo(compute_dtype(input.dtype)).eps
    y, _ = RMSNormFunction.apply(input, weight, dims, tuple(range(dims[0])), eps)
    return y
