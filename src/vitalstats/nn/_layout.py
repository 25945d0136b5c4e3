"""Shapes and memory layouts shared by the normalisation kernels."""

from __future__ import annotations

from torch import Tensor

from vitalstats.stats.batch import compute_dtype

__all__ = ["channel_view", "channels_contiguous", "compute_dtype", "reduced_dims"]


def channel_view(t: Tensor | None, ndim: int) -> Tensor | None:
    """(C,) -> (1, C, 1, ..., 1) so it broadcasts against an (N, C, *) input of ``ndim`` dims."""
    return None if t is None else t.reshape((1, -1) + (1,) * (ndim - 2))


def reduced_dims(x: Tensor) -> tuple[int, ...]:
    """Every dim of an (N, C, *) input but the channel dim 1: BatchNorm's statistic dims."""
    return (0, *range(2, x.dim()))


def channels_contiguous(x: Tensor) -> bool:
    """True when the channels of an (N, C, *) input are the contiguous innermost dim: (N, C),
    (N, C, 1, ...), or channels_last. Per-channel coefficients then vary along memory rows,
    where one ``addcmul`` pass is torch's fastest CPU elementwise kernel."""
    if x.dim() == 2 or x.numel() == x.shape[0] * x.shape[1]:
        return x.is_contiguous()
    return x.movedim(1, -1).is_contiguous()
