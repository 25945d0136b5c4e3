"""Mean-field signal propagation: the mean and variance the theory predicts after each layer.

The entries of each activation tensor are modelled as draws from one Gaussian N(mean, var)
(the infinite-width, independent-inputs picture of He et al. 2015 and Poole et al. 2016):

- Linear / Conv with realised weights ``W`` (rows ``w_i`` of length fan_in) and bias ``b``, on
  inputs N(m, v): ``y_i = w_i . x + b_i`` has, over units ``i`` and samples,
  mean ``m * mean(s) + mean(b)`` and variance ``v * mean(r) + var(m * s + b)``, where
  ``s_i = sum(w_i)`` and ``r_i = sum(w_i**2)``. With ``W ~ N(0, sigma^2)`` this is the familiar
  ``fan_in * sigma^2 * v`` (seed 004: 512 * 1 * 1 = 512). Padding at conv borders is ignored.
- ReLU, LeakyReLU, PReLU, RReLU: closed form (ReLU halves the second moment: gain sqrt(2)).
- Other elementwise activations ``f``: ``E[f(m + sqrt(v) z)]`` and ``Var[...]`` for
  z ~ N(0, 1), integrated numerically (trapezoid rule on a fine grid).
- BatchNorm (batch statistics), LayerNorm, GroupNorm: unit variance times ``mean(gamma**2)``,
  plus the spread of ``beta``; BatchNorm in eval mode applies its running statistics.
- Dropout in training scales the second moment by 1 / (1 - p); Identity, Flatten: unchanged.

Anything else has no prediction; the chain then continues from that layer's measured output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vitalstats.init import activations

_GRID_HALF_WIDTH = 10.0  # N(0, 1) mass beyond 10 std is ~1e-23
_SMOOTH_GRID_POINTS = 2_001  # the trapezoid rule converges spectrally for smooth f: ~1e-15
_KINKED_GRID_POINTS = 8_001  # spacing 0.0025: ~1e-6 relative error at a kink


@dataclass(frozen=True)
class GaussianMoments:
    """Mean and variance of the Gaussian that models a tensor's entries."""

    mean: float
    var: float

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    @property
    def second_moment(self) -> float:
        return self.var + self.mean**2


_grid_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _standard_normal_grid(points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points z and trapezoid weights of the N(0, 1) density (summing to 1), float64."""
    if points not in _grid_cache:
        z = torch.linspace(-_GRID_HALF_WIDTH, _GRID_HALF_WIDTH, points, dtype=torch.float64)
        weights = torch.exp(-0.5 * z * z)
        weights[0] *= 0.5
        weights[-1] *= 0.5
        _grid_cache[points] = z, weights / weights.sum()
    return _grid_cache[points]


def gaussian_through(
    function: Callable[[torch.Tensor], torch.Tensor],
    moments: GaussianMoments,
    smooth: bool = False,
) -> GaussianMoments:
    """Mean and variance of ``function(x)`` for ``x ~ N(moments.mean, moments.var)``.

    Trapezoid rule on [-10, 10] standard deviations: 2001 points when ``function`` is smooth
    (exact to rounding), 8001 when it may have kinks.
    """
    z, weights = _standard_normal_grid(_SMOOTH_GRID_POINTS if smooth else _KINKED_GRID_POINTS)
    with torch.no_grad():
        y = function(moments.mean + moments.std * z).to(torch.float64)
    mean = float((weights * y).sum())
    var = float((weights * (y - mean).square()).sum())  # two passes: no cancellation
    return GaussianMoments(mean, var)


def rectifier_moments(
    slope_mean: float, slope_square_mean: float, moments: GaussianMoments
) -> GaussianMoments:
    """Closed form for ``f(x) = max(x, 0) + slope * min(x, 0)``, x ~ N(m, v) (He et al. 2015).

    With a = m / s, E[max(x, 0)] = m Phi(a) + s phi(a) and E[max(x, 0)^2] = (m^2 + v) Phi(a)
    + m s phi(a); the negative part is what remains of E[x] and E[x^2]. A random slope
    (RReLU in training) enters through its mean and mean square.
    """
    m, v, s = moments.mean, max(moments.var, 0.0), moments.std
    if s == 0.0:
        value = m if m >= 0 else slope_mean * m
        return GaussianMoments(
            value, 0.0 if m >= 0 else (slope_square_mean - slope_mean**2) * m * m
        )
    a = m / s
    cdf = 0.5 * math.erfc(-a / math.sqrt(2.0))  # erfc: accurate far in the lower tail
    pdf = math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    positive_mean = m * cdf + s * pdf
    positive_square = (m * m + v) * cdf + m * s * pdf
    negative_mean = m - positive_mean
    negative_square = max(m * m + v - positive_square, 0.0)
    mean = positive_mean + slope_mean * negative_mean
    second = positive_square + slope_square_mean * negative_square
    return GaussianMoments(mean, max(second - mean * mean, 0.0))


def second_moment_gain(activation: nn.Module | Callable[[torch.Tensor], torch.Tensor]) -> float:
    """``1 / sqrt(E[f(z)^2])`` for z ~ N(0, 1): the gain that keeps the second moment.

    For ReLU this is exactly torch's sqrt(2); for tanh it is 1.593 (torch uses 5/3, a
    heuristic for the saturating regime); it gives a principled gain for activations torch has
    none for, e.g. GELU 1.53 and SiLU 1.68.
    """
    function = (
        activations.elementwise_function(activation)
        if isinstance(activation, nn.Module)
        else activation
    )
    if function is None:
        raise ValueError(
            f"second_moment_gain: {type(activation).__name__} is not an elementwise activation; "
            "pass an activation module such as nn.GELU() or a function of a tensor."
        )
    if isinstance(activation, nn.Module):
        moments = _activation_moments(activation, GaussianMoments(0.0, 1.0))
    else:
        moments = gaussian_through(function, GaussianMoments(0.0, 1.0))
    return 1.0 / math.sqrt(moments.second_moment)


def _activation_moments(module: nn.Module, x: GaussianMoments) -> GaussianMoments | None:
    slopes = activations.rectifier_slopes(module)
    if slopes is not None:
        return rectifier_moments(*slopes, x)
    function = activations.elementwise_function(module)
    if function is None:
        return None
    return gaussian_through(function, x, smooth=isinstance(module, activations.SMOOTH))


def _mean_var(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance along the last dimension."""
    return values.mean(-1), values.var(-1, correction=0)


def _covariance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - a.mean(-1, keepdim=True)) * (b - b.mean(-1, keepdim=True))).mean(-1)


def _weight_summaries(
    row_sums: torch.Tensor, row_squares: torch.Tensor, biases: torch.Tensor
) -> torch.Tensor:
    """(k, 6) from float64 (k, out) row sums s, row sums of squares r and biases b of k
    layers: mean and var of s, mean of r, mean and var of b, cov(s, b)."""
    return torch.stack(
        [
            *_mean_var(row_sums),
            row_squares.mean(-1),
            *_mean_var(biases),
            _covariance(row_sums, biases),
        ],
        dim=-1,
    )


def _row_sums_and_squares(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output unit, sum(w) and sum(w^2) over its fan_in, reduced in the weight's own
    precision (float32 at least; a float64 accumulator is ~30x slower on CPU) and returned
    as float64."""
    rows = weight.detach().flatten(1)
    if rows.dtype in (torch.float16, torch.bfloat16):
        rows = rows.float()
    return rows.sum(1).double(), torch.linalg.vector_norm(rows, dim=1).double().square()


def _vector(module: nn.Module, name: str, size: int, fill: float, device) -> torch.Tensor:
    value = getattr(module, name, None)
    if value is None:
        return torch.full((size,), fill, dtype=torch.float64, device=device)
    return value.detach().to(torch.float64).flatten()


def _batch_norm_summary(module: nn.Module) -> torch.Tensor:
    """Batch statistics: (mean(gamma^2), mean(beta), var(beta)); with running statistics also
    the per-channel eval-mode scale a = gamma / sqrt(running_var + eps) and shift
    c = beta - running_mean * a: mean/var of a and c, cov(a, c), mean(a^2)."""
    device = module.running_var.device if module.running_var is not None else None
    gamma = _vector(module, "weight", module.num_features, 1.0, device)
    beta = _vector(module, "bias", module.num_features, 0.0, gamma.device)
    head = [gamma.square().mean(), *_mean_var(beta)]
    if module.running_var is None:
        return torch.stack(head)
    scale = gamma / (module.running_var.detach().double() + module.eps).sqrt()
    shift = beta - module.running_mean.detach().double() * scale
    return torch.stack(
        [
            *head,
            *_mean_var(scale),
            *_mean_var(shift),
            _covariance(scale, shift),
            scale.square().mean(),
        ]
    )


def parameter_summaries(modules: list[nn.Module]) -> dict[int, torch.Tensor]:
    """By ``id(module)``, the float64 numbers :func:`predict` needs, on the module's device.

    Linear/Conv layers cost two reductions each; their per-unit results are stacked by weight
    shape and summarised together.
    """
    summaries: dict[int, torch.Tensor] = {}
    groups: dict[tuple, list[nn.Module]] = {}
    for module in modules:
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            continue
        if activations.is_weight_layer(module):
            weight = module.weight
            key = (tuple(weight.shape), weight.dtype, weight.device)
            groups.setdefault(key, []).append(module)
        else:
            summary = parameter_summary(module)
            if summary is not None:
                summaries[id(module)] = summary
    for layers in groups.values():
        sums_and_squares = [_row_sums_and_squares(m.weight) for m in layers]
        biases = [
            m.bias.detach().double() if m.bias is not None else torch.zeros_like(sums)
            for m, (sums, _) in zip(layers, sums_and_squares)
        ]
        summaries_of_group = _weight_summaries(
            torch.stack([sums for sums, _ in sums_and_squares]),
            torch.stack([squares for _, squares in sums_and_squares]),
            torch.stack(biases),
        )
        for module, summary in zip(layers, summaries_of_group):
            summaries[id(module)] = summary
    return summaries


def parameter_summary(module: nn.Module) -> torch.Tensor | None:
    """The numbers :func:`predict` needs for one module (see :func:`parameter_summaries`)."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return None
    if activations.is_weight_layer(module):
        return parameter_summaries([module])[id(module)]
    if activations.is_batch_norm(module):
        return _batch_norm_summary(module)
    parameter = next(iter(module.parameters(recurse=False)), None)
    device = None if parameter is None else parameter.device
    if activations.is_sample_norm(module):
        channels = getattr(module, "num_channels", None) or (
            parameter.numel() if parameter is not None else 1
        )
        gamma = _vector(module, "weight", channels, 1.0, device)
        beta = _vector(module, "bias", channels, 0.0, device)
        return torch.stack([gamma.square().mean(), *_mean_var(beta)])
    if activations.is_rms_norm(module):
        gamma = _vector(module, "weight", 1, 1.0, device)
        return torch.stack([gamma.mean(), gamma.square().mean()])
    return None


def predict(
    module: nn.Module, summary: list[float] | None, x: GaussianMoments
) -> GaussianMoments | None:
    """Moments of ``module``'s output for inputs ``x``, or None if the theory has no rule."""
    m, v = x.mean, x.var
    if activations.is_weight_layer(module) and summary is not None:
        mean_s, var_s, mean_r, mean_b, var_b, cov_sb = summary
        return GaussianMoments(
            m * mean_s + mean_b, v * mean_r + m * m * var_s + var_b + 2 * m * cov_sb
        )
    if activations.is_batch_norm(module) and summary is not None:
        uses_batch_statistics = module.training or len(summary) == 3
        if uses_batch_statistics:
            gamma_sq, mean_beta, var_beta = summary[:3]
            return GaussianMoments(mean_beta, gamma_sq * v / (v + module.eps) + var_beta)
        _, _, _, mean_a, var_a, mean_c, var_c, cov_ac, mean_a_sq = summary
        return GaussianMoments(
            m * mean_a + mean_c, v * mean_a_sq + m * m * var_a + var_c + 2 * m * cov_ac
        )
    if activations.is_sample_norm(module) and summary is not None:
        gamma_sq, mean_beta, var_beta = summary
        return GaussianMoments(mean_beta, gamma_sq * v / (v + module.eps) + var_beta)
    if activations.is_rms_norm(module) and summary is not None:
        mean_gamma, gamma_sq = summary
        eps = module.eps if module.eps is not None else torch.finfo(torch.float32).eps
        q = x.second_moment
        out_mean = mean_gamma * m / math.sqrt(q + eps)
        return GaussianMoments(out_mean, gamma_sq * q / (q + eps) - out_mean**2)
    keep = activations.dropout_keep_probability(module)
    if keep is not None:
        return GaussianMoments(m, x.second_moment / keep - m * m)
    if isinstance(module, nn.Flatten | nn.Unflatten):
        return x
    return _activation_moments(module, x)
