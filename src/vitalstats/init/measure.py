"""Batched output statistics: many tensors' mean, std and fractions in a few kernels.

On an accelerator, tensors of one shape and dtype are stacked (in chunks of bounded size) and
reduced together, so a 50-layer network costs a handful of kernel launches instead of
hundreds. On CPU, where a launch is cheap and a copy is not, each tensor is reduced in place.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Literal

import torch
from torch import nn

from vitalstats.init import activations

Kind = Literal["plain", "saturating", "sigmoid", "relu"]
MAX_CHUNK_ELEMENTS = 1 << 26  # 256 MB of float32 stacked at a time


def statistic_kind(module: nn.Module) -> Kind:
    """Which fraction a layer's output gets: saturation (tanh, sigmoid), zeros (ReLU family)."""
    if isinstance(module, nn.Sigmoid):
        return "sigmoid"
    if isinstance(module, activations.SATURATING):
        return "saturating"
    if isinstance(module, activations.RELU_FAMILY):
        return "relu"
    return "plain"


def widened(tensor: torch.Tensor) -> torch.Tensor:
    """Detached, and float32 for half precision so sums do not overflow or round away."""
    tensor = tensor.detach()
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _fractions(rows: torch.Tensor, kind: Kind) -> torch.Tensor:
    threshold = activations.SATURATION_THRESHOLD
    if kind == "sigmoid":  # saturated at both ends: y > 0.97 or y < 0.03
        return ((rows - 0.5).abs() > threshold - 0.5).mean(1, dtype=rows.dtype)
    if kind == "saturating":  # tanh: |y| > 0.97
        return (rows.abs() > threshold).mean(1, dtype=rows.dtype)
    return (rows <= 0).mean(1, dtype=rows.dtype)  # ReLU family: y <= 0


def _chunk_statistics(rows: torch.Tensor, kinds: list[Kind]) -> torch.Tensor:
    """(k, 4): mean, population std, saturated fraction, zero fraction (NaN if not applicable).

    Two passes, mean then the norm of the centred rows: no cancellation, and vectorised
    (``torch.std_mean``'s Welford loop is over 10x slower on CPU).
    """
    count = max(rows.shape[1], 1)
    mean = rows.mean(1)
    std = torch.linalg.vector_norm(rows - mean[:, None], dim=1) / math.sqrt(count)
    saturated = torch.full_like(mean, math.nan)
    zero = torch.full_like(mean, math.nan)
    for kind, target in (("saturating", saturated), ("sigmoid", saturated), ("relu", zero)):
        chosen = [i for i, k in enumerate(kinds) if k == kind]
        if chosen:
            index = torch.tensor(chosen, device=rows.device)
            target[index] = _fractions(rows.index_select(0, index), kind)
    return torch.stack([mean, std, saturated, zero], dim=1)


def batched_statistics(
    tensors: list[torch.Tensor], kinds: list[Kind], stack: bool | None = None
) -> list[torch.Tensor]:
    """Per tensor a device tensor ``(mean, std, saturated, zero)``; no host sync.

    ``stack`` forces (True) or avoids (False) stacking; by default only off the CPU.
    """
    results: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, tensor in enumerate(tensors):
        groups[(tuple(tensor.shape), tensor.dtype, tensor.device)].append(i)
    for (_, _, device), indices in groups.items():
        if not (
            stack if stack is not None else device.type != "cpu"
        ):  # copies cost more than launches here: one tensor at a time
            for i in indices:
                rows = tensors[i].reshape(1, -1)
                results[i] = _chunk_statistics(rows, [kinds[i]])[0]
            continue
        per_chunk = max(1, MAX_CHUNK_ELEMENTS // max(tensors[indices[0]].numel(), 1))
        for start in range(0, len(indices), per_chunk):
            chunk = indices[start : start + per_chunk]
            rows = torch.stack([tensors[i] for i in chunk]).reshape(len(chunk), -1)
            statistics = _chunk_statistics(rows, [kinds[i] for i in chunk])
            for row, i in enumerate(chunk):
                results[i] = statistics[row]
    return results  # type: ignore[return-value]
