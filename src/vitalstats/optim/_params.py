"""Small helpers shared by the optim modules: naming parameters and grouping tensors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias

import torch
from torch import Tensor, nn

ParametersLike: TypeAlias = nn.Module | Tensor | Iterable[Tensor] | Iterable[tuple[str, Tensor]]


def named_tensors(parameters: ParametersLike, *, argument: str) -> list[tuple[str, Tensor]]:
    """Turn a module, a tensor, tensors or ``(name, tensor)`` pairs into named tensors.

    Unnamed tensors are called ``"parameter[i]"`` (their position in the iterable), so an
    error can still point at one.
    """
    if isinstance(parameters, nn.Module):
        return list(parameters.named_parameters())
    if isinstance(parameters, Tensor):
        return [("parameter[0]", parameters)]
    if not isinstance(parameters, Iterable):
        raise TypeError(
            f"{argument}: expected an nn.Module, tensors or (name, tensor) pairs, got a "
            f"{type(parameters).__name__}. Pass model, model.parameters() or "
            "model.named_parameters()."
        )
    named: list[tuple[str, Tensor]] = []
    for index, item in enumerate(parameters):
        if isinstance(item, Tensor):
            named.append((f"parameter[{index}]", item))
        elif (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], Tensor)
        ):
            named.append(item)
        else:
            raise TypeError(
                f"{argument}: expected an nn.Module, tensors or (name, tensor) pairs such as "
                f"model.named_parameters(); item {index} is a {type(item).__name__}. "
                "Pass model.parameters() or model.named_parameters()."
            )
    return named


def group_by_device_and_dtype(
    tensors: list[Tensor],
) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Indices of ``tensors`` grouped by (device, dtype), in first-seen order.

    The ``torch._foreach_*`` kernels need every tensor of one call on one device with one
    dtype; the indices let a caller gather the matching state tensors.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault((tensor.device, tensor.dtype), []).append(index)
    return groups


_FOREACH_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mtia", torch._C._get_privateuse1_backend_name())
_FOREACH_TENSOR_TYPES = (Tensor, nn.Parameter)


def device_has_foreach_kernels(device: torch.device) -> bool:
    """True when ``torch._foreach_*`` kernels run on this device type (CPU, CUDA, XPU, ...)."""
    return device.type in _FOREACH_DEVICE_TYPES


def has_foreach_kernels(tensors: list[Tensor]) -> bool:
    """True when the foreach kernels accept all these tensors (plain tensors, supported device)."""
    devices = {t.device for t in tensors}
    return all(device_has_foreach_kernels(d) for d in devices) and all(
        type(t) in _FOREACH_TENSOR_TYPES for t in tensors
    )
