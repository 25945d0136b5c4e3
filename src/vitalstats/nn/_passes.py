"""Memory-pass primitives for the normalisation kernels on the CPU.

Composite norms are bound by passes over memory, not flops, so these helpers pick the pass
torch runs fastest: reductions along the contiguous last dim first (then the small rest),
matrix-vector products for weighted sums, mul + add instead of a broadcasting addcmul when
the small operand is constant along the last dim, and chunks of dim 0 small enough that the
several passes of one chunk stay in cache.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

Dims = tuple[int, ...]


def _count(x: Tensor, dims: Dims) -> int:
    """Number of elements reduced into one statistic."""
    return math.prod(x.shape[dim] for dim in dims)


def _trailing_run(t: Tensor, dims: Dims) -> Dims:
    """The dims of ``dims`` that end ``t``'s shape: rows in memory when ``t`` is contiguous."""
    first = t.dim()
    while first > 0 and first - 1 in dims:
        first -= 1
    return tuple(range(first, t.dim()))


def _sum(t: Tensor, dims: Dims) -> Tensor:
    """sum over ``dims`` (keepdim). For a contiguous ``t`` the trailing run of ``dims`` is summed
    first as rows, then the rest over the small result (BatchNorm: over H*W, then over N)."""
    if not dims:
        return t
    inner = _trailing_run(t, dims)
    outer = tuple(d for d in dims if d not in inner)
    if inner and outer and t.is_contiguous():
        return t.sum(dim=inner, keepdim=True).sum(dim=outer, keepdim=True)
    return t.sum(dim=dims, keepdim=True)


def _sum_of_squares(t: Tensor, dims: Dims) -> Tensor:
    """sum(t^2) over ``dims`` (keepdim). For a contiguous ``t`` the trailing run of ``dims`` is a
    row reduction, done by ``vector_norm`` without a t^2 temporary, and the rest is summed over
    the small result. vector_norm is slow over outer dims and has a NaN gradient at 0, so it is
    used neither there nor under autograd (double backward)."""
    inner = _trailing_run(t, dims)
    if not inner or torch.is_grad_enabled() or not t.is_contiguous():
        return _sum(t * t, dims)
    outer = tuple(d for d in dims if d not in inner)
    row_sums = torch.linalg.vector_norm(t, dim=inner, keepdim=True).square_()
    return row_sums.sum(dim=outer, keepdim=True) if outer else row_sums


def _sum_times_weight(t: Tensor, weight: Tensor | None, dims: Dims) -> Tensor:
    """sum over ``dims`` of t * weight (keepdim), without a full-size temporary: first sum over
    the dims where the weight is constant, then a matrix-vector product (LayerNorm) or a small
    product (GroupNorm) over the dims where it varies."""
    if weight is None:
        return _sum(t, dims)
    weight_shape = (1,) * (t.dim() - weight.dim()) + tuple(weight.shape)
    constant = tuple(d for d in dims if weight_shape[d] == 1)
    varying = tuple(d for d in dims if weight_shape[d] != 1)
    partial = _sum(t, constant)
    if not varying:
        return partial * weight
    trailing = varying == tuple(range(t.dim() - len(varying), t.dim()))
    if partial is t and trailing and weight.numel() == _count(t, varying):
        rows = partial.reshape(-1, weight.numel()) @ weight.reshape(-1)
        return rows.reshape(*t.shape[: t.dim() - len(varying)], *(1,) * len(varying))
    return (partial * weight).sum(dim=varying, keepdim=True)


def _rows_weighted_sum(t: Tensor, row_weights: Tensor, row_length: int) -> Tensor:
    """sum over rows r of row_weights[r] * t[r], flat, for ``t`` seen as (rows, row_length)
    (LayerNorm and RMSNorm parameter gradients): a transposed matrix-vector product."""
    rows = row_weights.numel()
    return t.reshape(rows, row_length).T @ row_weights.reshape(rows)


def _leading_rows(t: Tensor, stat_dims: Dims, param_dims: Dims) -> bool:
    """True for LayerNorm/RMSNorm layouts: statistics over the trailing dims, parameters shared
    over all the leading ones."""
    leading = t.dim() - len(stat_dims)
    return stat_dims == tuple(range(leading, t.dim())) and param_dims == tuple(range(leading))


def _constant_along_last(t: Tensor) -> bool:
    """A small broadcast operand with one value per row (size 1 in the last dim)."""
    return t.dim() == 0 or t.shape[-1] == 1


def _multiply_add(t: Tensor, scale: Tensor, shift: Tensor, out: Tensor) -> Tensor:
    """out = t * scale + shift for small broadcast ``scale``/``shift``. One addcmul pass when
    they vary along the contiguous last dim; else multiply then add in place, because torch's
    CPU addcmul is 2-4x slower than mul + add with operands constant along the last dim."""
    if _constant_along_last(scale) or _constant_along_last(shift):
        return torch.mul(t, scale, out=out).add_(shift)
    return torch.addcmul(shift, t, scale, out=out)


def _broadcast_numel(a: Tensor, b: Tensor | None) -> int:
    """Number of elements of a * b (torch.broadcast_shapes is slow in Python)."""
    if b is None:
        return a.numel()
    ndim = max(a.dim(), b.dim())
    shape_a = (1,) * (ndim - a.dim()) + tuple(a.shape)
    shape_b = (1,) * (ndim - b.dim()) + tuple(b.shape)
    return math.prod(max(x, y) for x, y in zip(shape_a, shape_b, strict=True))


_CHUNK_BYTES = 1 << 21


def _row_chunks(x: Tensor, stat_dims: Dims, param_dims: Dims) -> list[slice]:
    """Slices of dim 0 of about ``_CHUNK_BYTES`` each, so that the passes over each chunk run
    in cache, not main memory: for statistics within one index of dim 0 (LayerNorm rows,
    GroupNorm/InstanceNorm samples) and for BatchNorm's (statistics = parameter dims).
    One slice (no chunking) for small or non-contiguous x."""
    across = 0 in stat_dims and stat_dims != param_dims
    if across or x.dim() < 2 or not x.is_contiguous() or x.shape[0] < 2:
        return [slice(None)]
    rows_per_chunk = max(1, _CHUNK_BYTES // max(1, x.numel() // x.shape[0] * x.element_size()))
    if rows_per_chunk * 2 > x.shape[0]:
        return [slice(None)]
    return [slice(i, i + rows_per_chunk) for i in range(0, x.shape[0], rows_per_chunk)]
