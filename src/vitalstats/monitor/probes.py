"""Probes on layer outputs: what is measured on activations and output gradients.

Each function takes a detached tensor and returns ``(field, value, rule)`` entries for the
``StepAccumulator`` (see ``recorder``): device tensors only, never a host sync. The monitor's
hooks decide *when* they run; ``metrics`` turns the flushed sums into named metrics.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from vitalstats.monitor.recorder import Entry, raw_moments
from vitalstats.stats.workspace import scratch

_RELU_FAMILY = (nn.ReLU, nn.ReLU6)  # outputs >= 0 and exactly 0 for negative input
_TANH_LIKE = (nn.Tanh, nn.Hardtanh, nn.Softsign)  # saturate at +-1
_SIGMOID_LIKE = (nn.Sigmoid, nn.Hardsigmoid)  # saturate at 0 and 1
_WEIGHTED = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.Embedding)


# Layers that cannot turn finite input into NaN/Inf: the per-step NaN sentinel skips them
# (a NaN passing through one is caught at the layer that created it or the next checked one).
_CANNOT_CREATE_NONFINITE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardsigmoid,
    nn.Softsign, nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
)  # fmt: skip


def can_create_nonfinite(module: nn.Module) -> bool:
    """False for elementwise-bounded, pooling and reshaping layers (finite in -> finite out)."""
    return not isinstance(module, _CANNOT_CREATE_NONFINITE)


def layer_kind(module: nn.Module) -> str:
    """'relu' | 'tanh' | 'sigmoid' | 'weighted' | 'other': which activation probes apply."""
    if isinstance(module, _RELU_FAMILY):  # before Hardtanh: ReLU6 subclasses it
        return "relu"
    if isinstance(module, _TANH_LIKE):
        return "tanh"
    if isinstance(module, _SIGMOID_LIKE):
        return "sigmoid"
    if isinstance(module, _WEIGHTED):
        return "weighted"
    return "other"


def first_tensor(value: object) -> torch.Tensor | None:
    """The first floating-point tensor in a module output (tensor, tuple/list or dict)."""
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else None
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        for item in value.values():
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def nonfinite_sentinel(y: torch.Tensor) -> torch.Tensor:
    """The float32 sum of ``y``: one cheap reduction per step, judged at flush time. It is
    NaN/Inf exactly when ``y`` holds a NaN/Inf, or when a finite sum overflows float32
    (|sum| > 3.4e38, itself a sign of trouble)."""
    return y.sum(dtype=torch.float32)


def activation_entries(y: torch.Tensor, kind: str, unit_dim: int, level: float) -> list[Entry]:
    """Moments of the output; saturated count (tanh-like |y| > level, sigmoid-like
    |2y - 1| > level, the same cut in tanh units since sigmoid(x) = (1 + tanh(x/2)) / 2);
    per-unit 'alive' flags (ReLU family: a unit is dead when zero for the whole batch)."""
    entries: list[Entry] = [("act", raw_moments(y), "moments")]
    if kind in ("tanh", "sigmoid"):
        work = scratch("monitor.saturation", y.shape, y.dtype, y.device)  # no page faults
        if kind == "tanh":
            torch.abs(y, out=work)
        else:
            torch.sub(y, 0.5, out=work).abs_().mul_(2.0)
        saturated = work.gt_(level).sum(dtype=torch.float64)
        entries.append(("act_saturated", saturated, "sum"))
    elif kind == "relu" and y.dim() >= 2:
        other_dims = tuple(d for d in range(y.dim()) if d != unit_dim % y.dim())
        alive = (y.amax(dim=other_dims) > 0).to(torch.float32)
        entries.append(("act_alive", alive, "max"))
    return entries


def output_grad_entries(grad: torch.Tensor) -> list[Entry]:
    """Moments of the gradient of the loss w.r.t. a layer's output (its std is reported)."""
    return [("out_grad", raw_moments(grad, extremes=False), "moments")]


def strided_sample(x: torch.Tensor, max_values: int | None) -> torch.Tensor:
    """Every k-th value of ``x`` (flattened) so that at most ``max_values`` remain."""
    flat = x.reshape(-1)
    if max_values is None or flat.numel() <= max_values:
        return flat
    return flat[:: math.ceil(flat.numel() / max_values)]


def activation_histogram(
    y: torch.Tensor, bins: int, value_range: tuple[float, float], max_values: int | None
) -> torch.Tensor:
    """Counts of ``y`` in ``bins`` equal bins over ``value_range``; values outside (and +-Inf)
    fall in the end bins, NaN is left out."""
    low, high = value_range
    sample = strided_sample(y, max_values).float().clamp(low, high)
    return torch.histc(sample, bins, low, high)


def gradient_histogram(
    g: torch.Tensor, bins: int, log10_range: tuple[float, float], max_values: int | None
) -> torch.Tensor:
    """Counts of log10|g| in ``bins`` equal bins over ``log10_range`` (zeros and tiny values in
    the first bin, huge ones in the last, NaN left out)."""
    low, high = log10_range
    sample = strided_sample(g, max_values).float().abs().log10().clamp(low, high)
    return torch.histc(sample, bins, low, high)


def histogram_edges(bins: int, value_range: tuple[float, float]) -> torch.Tensor:
    """The ``bins + 1`` fixed edges (float64) of a histogram over ``value_range``."""
    return torch.linspace(value_range[0], value_range[1], bins + 1, dtype=torch.float64)


def metric_histogram_edges(config: Any) -> dict[str, Any]:
    """numpy edges of the monitor's two histogram metrics: ``act_hist`` over activation
    values, ``grad_hist`` over log10 |gradient|."""
    return {
        "act_hist": histogram_edges(
            config.histogram_bins, config.activation_histogram_range
        ).numpy(),
        "grad_hist": histogram_edges(
            config.histogram_bins, config.gradient_histogram_log10_range
        ).numpy(),
    }
