"""Initialisers that fill a weight in place, bit-exact with ``torch.nn.init``.

Given the same ``generator`` (or the same global seed) each function draws the same random
numbers in the same order and rounds the same way as its torch twin, so it returns exactly
torch's tensor; what we add is errors that name the function, the shape and the fix.

    >>> g = torch.Generator().manual_seed(0)
    >>> w = kaiming_normal_(torch.empty(256, 512), nonlinearity="relu", generator=g)
    >>> round(w.std().item(), 3)  # kaiming_std(512, "relu") = 0.0625
    0.063
"""

from __future__ import annotations

import math
import warnings

import torch

from vitalstats.init.gains import (
    FanMode,
    Nonlinearity,
    calculate_gain,
    fan_for_mode,
    fan_in_and_fan_out,
)


def xavier_uniform_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill with U(-bound, bound), ``bound = sqrt(3) * gain * sqrt(2 / (fan_in + fan_out))``.

    Glorot & Bengio (2010): a std that is the compromise between keeping the forward variance
    (1 / fan_in) and the backward variance (1 / fan_out).
    """
    fan_in, fan_out = fan_in_and_fan_out(tensor, caller="xavier_uniform_")
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    bound = math.sqrt(3.0) * std  # a uniform on [-b, b] has std b / sqrt(3)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def xavier_normal_(
    tensor: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill with N(0, std^2), ``std = gain * sqrt(2 / (fan_in + fan_out))`` (Glorot & Bengio)."""
    fan_in, fan_out = fan_in_and_fan_out(tensor, caller="xavier_normal_")
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    with torch.no_grad():
        return tensor.normal_(0.0, std, generator=generator)


def _kaiming_std(
    tensor: torch.Tensor, a: float, mode: FanMode | str, nonlinearity: str, caller: str
) -> float | None:
    """``gain / sqrt(fan)``, or None (after torch's warning) for a zero-element tensor."""
    if 0 in tensor.shape:
        warnings.warn(f"{caller}: initializing zero-element tensors is a no-op", stacklevel=3)
        return None
    fan = fan_for_mode(tensor, mode, caller=caller)
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(
    tensor: torch.Tensor,
    a: float = 0,
    mode: FanMode = "fan_in",
    nonlinearity: Nonlinearity = "leaky_relu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fill with U(-bound, bound), ``bound = sqrt(3) * gain / sqrt(fan)`` (He et al. 2015).

    ``a`` is the negative slope of the leaky ReLU that follows (used only with
    ``"leaky_relu"``). ``nn.Linear``'s default init is this with ``a = sqrt(5)``: a std of
    1 / sqrt(3 * fan_in), which shrinks variance about 3x per layer in a deep linear stack.
    """
    std = _kaiming_std(tensor, a, mode, nonlinearity, "kaiming_uniform_")
    if std is None:
        return tensor
    bound = math.sqrt(3.0) * std
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def kaiming_normal_(
    tensor: torch.Tensor,
    a: float = 0,
    mode: FanMode = "fan_in",
    nonlinearity: Nonlinearity = "leaky_relu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fill with N(0, std^2), ``std = gain / sqrt(fan)`` (He et al. 2015).

    ``mode="fan_in"`` keeps the forward variance, ``"fan_out"`` the backward one.
    """
    std = _kaiming_std(tensor, a, mode, nonlinearity, "kaiming_normal_")
    if std is None:
        return tensor
    with torch.no_grad():
        return tensor.normal_(0, std, generator=generator)


def orthogonal_(
    tensor: torch.Tensor, gain: float = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill with a (semi-)orthogonal matrix times ``gain`` (Saxe et al. 2013).

    The weight is viewed as ``(rows, numel / rows)``; Q of the QR decomposition of a standard
    normal matrix, with column signs fixed by diag(R) so Q is uniformly (Haar) distributed.
    Every singular value is ``gain``, so an orthogonal layer preserves the norm of its input.
    """
    if tensor.dim() < 2:
        raise ValueError(
            f"orthogonal_: the weight needs at least 2 dimensions (trailing ones are flattened); "
            f"got shape {tuple(tensor.shape)}."
        )
    if tensor.numel() == 0 or tensor.is_meta:
        return tensor
    rows = tensor.shape[0]
    columns = tensor.numel() // rows
    gaussian = tensor.new_empty((rows, columns)).normal_(0, 1, generator=generator)
    wide = rows < columns
    if wide:  # QR of the tall transpose, then transpose back: orthonormal rows
        gaussian = gaussian.t()
    q, r = torch.linalg.qr(gaussian)
    q *= torch.diag(r, 0).sign()
    if wide:
        q = q.t()
    with torch.no_grad():
        tensor.copy_(q.reshape(tensor.shape))
        tensor.mul_(gain)
    return tensor


def _standard_normal_cdf(x: float) -> float:
    return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0


def trunc_normal_(
    tensor: torch.Tensor,
    mean: float = 0.0,
    std: float = 1.0,
    a: float = -2.0,
    b: float = 2.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fill with N(mean, std^2) truncated to [a, b] (note: a and b are absolute bounds, not
    multiples of std, as in torch).

    Exact rejection sampling, as torch does: when [a, b] holds more than 30% of the normal's
    mass, redraw the normals that fall outside; otherwise propose uniforms on [a, b] and accept
    each with probability exp(-((x - mean) / std)^2 / 2) relative to the density's peak in
    [a, b]. Both loops redraw only the still-rejected entries.
    """
    if tensor.is_meta:
        return tensor
    if mean < a - 2 * std or mean > b + 2 * std:
        warnings.warn(
            f"trunc_normal_: mean {mean} is more than 2 std from [a, b] = [{a}, {b}]; "
            "the distribution of values may be incorrect.",
            stacklevel=2,
        )
    with torch.no_grad():
        mass_inside = _standard_normal_cdf((b - mean) / std) - _standard_normal_cdf(
            (a - mean) / std
        )
        if mass_inside > 0.3:
            _redraw_outside(tensor, mean, std, a, b, generator)
        else:
            _uniform_proposals(tensor, mean, std, a, b, generator)
    return tensor


def _redraw_outside(tensor, mean, std, a, b, generator) -> None:
    # Bounds rounded to the tensor's dtype, so a value equal to the rounded bound is inside.
    low = tensor.new_tensor(a, device="cpu").item()
    high = tensor.new_tensor(b, device="cpu").item()
    values = tensor.normal_(mean, std, generator=generator)
    while True:
        outside = (values < low) | (values > high)
        if not outside.any():
            break
        fresh = torch.empty_like(values).normal_(mean, std, generator=generator)
        values = torch.where(outside, fresh, values)
    if values is not tensor:
        tensor.copy_(values)


def _uniform_proposals(tensor, mean, std, a, b, generator) -> None:
    peak = max(a, min(mean, b))  # where the normal density is highest inside [a, b]
    log_peak_density = -0.5 * ((peak - mean) / std) ** 2

    def log_acceptance(x: torch.Tensor) -> torch.Tensor:  # log(density(x) / density(peak))
        return x.sub(mean).div_(std).pow_(2).mul_(-0.5).sub_(log_peak_density)

    uniforms = torch.empty_like(tensor)
    values = tensor.uniform_(a, b, generator=generator)
    rejected = uniforms.uniform_(generator=generator).log_().gt(log_acceptance(values))
    if not rejected.any():
        return
    proposals = torch.empty_like(tensor)
    while True:
        proposals.uniform_(a, b, generator=generator)
        values = torch.where(rejected, proposals, values)
        still_rejected = uniforms.uniform_(generator=generator).log_().gt(log_acceptance(proposals))
        rejected = torch.where(rejected, still_rejected, rejected)
        if not rejected.any():
            break
    tensor.copy_(values)
