"""Gradient-norm clipping with torch's exact result and an error that names the culprits.

    total = || (||g_1||_p, ..., ||g_k||_p) ||_p      the p-norm of all gradients as one vector
    g_i  <- g_i * min(max_norm / (total + 1e-6), 1)  (p = inf: the largest |g| anywhere)

Same float operations in the same order as ``torch.nn.utils.clip_grad_norm_``, so gradients
and the returned norm match it to the last bit. The multiplication by the clamped factor
happens even when it is 1, which avoids reading the norm on the host.
"""

from __future__ import annotations

import types
import warnings

import torch
from torch import Tensor

from vitalstats.optim._params import (
    ParametersLike,
    device_has_foreach_kernels,
    group_by_device_and_dtype,
    has_foreach_kernels,
    named_tensors,
)


class NonFiniteGradientError(RuntimeError):
    """The total gradient norm is NaN or infinite; the message names the parameters."""


def _groups_in_torch_order(
    grads: list[Tensor],
) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Gradient indices per (device, dtype), in the order torch's ``clip_grad_norm_`` visits
    the groups: with mixed dtypes that order sets the rounding of the total norm."""
    try:
        from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype
    except ImportError:  # pragma: no cover - a torch without the helper
        return group_by_device_and_dtype(grads)
    grouped = _group_tensors_by_device_and_dtype([grads], with_indices=True)
    return {key: list(indices) for key, (_, indices) in grouped.items()}


def _use_foreach(foreach: bool | None, tensors: list[Tensor], device: torch.device) -> bool:
    if foreach is None:
        return has_foreach_kernels(tensors)
    if foreach and not device_has_foreach_kernels(device):
        raise RuntimeError(
            f"clip_grad_norm_: foreach=True was passed, but the foreach kernels do not run on "
            f"{device.type} tensors. Pass foreach=None or foreach=False."
        )
    return foreach


def _nonfinite_message(
    names: list[str], grads: list[Tensor], total: Tensor, norm_type: float
) -> str:
    culprits = []
    for name, grad in zip(names, grads):
        nan_count = int(grad.isnan().sum())
        inf_count = int(grad.isinf().sum())
        if nan_count or inf_count:
            culprits.append(f"{name} {tuple(grad.shape)} ({nan_count} NaN, {inf_count} Inf)")
    if culprits:
        where = "non-finite gradients in: " + ", ".join(culprits)
        fix = (
            "Find where they come from (a NaN/Inf loss, a log or division of 0, fp16 overflow: "
            "use torch.amp.GradScaler) or lower the learning rate"
        )
    else:
        where = "every gradient is finite, but their norm overflowed its dtype"
        fix = "Compute the loss in float32, scale it down, or use a GradScaler"
    return (
        f"clip_grad_norm_: the total {norm_type}-norm of the gradients is {total.item()}, so "
        f"they cannot be clipped; {where}. {fix}; or pass error_if_nonfinite=False to scale "
        "by the non-finite norm anyway."
    )


@torch.no_grad()
def clip_grad_norm_(
    parameters: ParametersLike,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    """Scale gradients in place so their total ``norm_type``-norm is at most ``max_norm``.

    ``parameters``: a module, a tensor, tensors, or ``(name, tensor)`` pairs (names make
    the ``error_if_nonfinite`` message precise). Returns the total norm before clipping, a
    0-dim tensor on the first gradient's device (``tensor(0.)`` when no gradient exists).
    ``norm_type`` may be ``float('inf')``. With ``error_if_nonfinite=True`` a NaN/Inf total
    raises :class:`NonFiniteGradientError` (a ``RuntimeError``) listing the parameters whose
    gradients hold NaN or Inf; that check reads the norm on the host, as torch's does.

    Differences from torch: a negative ``max_norm`` raises ``ValueError`` (torch would
    silently flip the gradients' sign).
    """
    max_norm = float(max_norm)
    if max_norm < 0:
        raise ValueError(
            f"clip_grad_norm_: max_norm must be >= 0, got {max_norm}; a negative factor would "
            "flip the gradients. Pass the largest allowed norm, e.g. max_norm=1.0."
        )
    is_generator = isinstance(parameters, types.GeneratorType)
    named = named_tensors(parameters, argument="clip_grad_norm_ parameters")
    if is_generator and not named:
        warnings.warn(
            "`parameters` is an empty generator, no gradient clipping will occur.",
            stacklevel=3,
        )
    names = [name for name, p in named if p.grad is not None]
    grads = [p.grad for _, p in named if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm_type = float(norm_type)
    groups = _groups_in_torch_order(grads)

    norms: list[Tensor] = []
    for (device, _), indices in groups.items():
        group = [grads[i] for i in indices]
        if _use_foreach(foreach, group, device):
            norms.extend(torch._foreach_norm(group, norm_type))
        else:
            norms.extend(torch.linalg.vector_norm(g, norm_type) for g in group)
    first_device = grads[0].device
    total = torch.linalg.vector_norm(
        torch.stack([norm.to(first_device) for norm in norms]), norm_type
    )
    if error_if_nonfinite and not torch.isfinite(total):
        raise NonFiniteGradientError(_nonfinite_message(names, grads, total, norm_type))

    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for (device, _), indices in groups.items():
        group = [grads[i] for i in indices]
        device_factor = factor.to(device)
        if _use_foreach(foreach, group, device):
            torch._foreach_mul_(group, device_factor)
        else:
            for grad in group:
                grad.mul_(device_factor)
    return total
