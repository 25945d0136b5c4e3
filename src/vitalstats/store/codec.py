"""Checking and packing what callers hand the store: steps, scalar values, histograms.

Histograms are stored as raw little-endian numpy buffers (``edges``: float32 or float64,
``counts``: int64, float32 or float64) with their dtype string beside them, so a 64-bin
histogram costs about 780 bytes and round-trips bit for bit.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

_FLOAT_DTYPES = {np.dtype(np.float32): "<f4", np.dtype(np.float64): "<f8"}


def as_step(step: Any, where: str) -> int:
    """``step`` as a Python int (int, numpy integer or integer 0-d tensor; not bool/float)."""
    if isinstance(step, bool):
        raise TypeError(f"{where}: step must be an int, got bool {step!r}")
    try:
        return operator.index(step)
    except TypeError:
        raise TypeError(
            f"{where}: step must be an int (the optimiser step), got {type(step).__name__} "
            f"{step!r}; pass int(step)"
        ) from None


def as_float(value: Any, where: str) -> float:
    """A scalar as a Python float. A one-element tensor is copied to the host here."""
    if type(value) is float:
        return value
    if isinstance(value, bool | str | bytes):
        raise TypeError(f"{where}: value must be a number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        shape = getattr(value, "shape", None)
        got = (
            f"{type(value).__name__} of shape {tuple(shape)}" if shape is not None else repr(value)
        )
        raise TypeError(
            f"{where}: value must be a real number or a one-element tensor, got {got}; "
            f"reduce it first (e.g. x.mean())"
        ) from None


def to_numpy(array: Any) -> np.ndarray:
    """A numpy view of a numpy array, list, or torch tensor (any device: copied to host)."""
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # a torch tensor; no torch import
        tensor = array.detach().cpu()
        if tensor.is_floating_point() and tensor.element_size() < 4:  # float16 / bfloat16
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(array)


def encode_histogram(edges: Any, counts: Any, where: str) -> tuple[bytes, str, bytes, str]:
    """Validate ``edges`` (B+1,) and ``counts`` (B,) and pack them as (bytes, dtype) pairs."""
    edges_array, counts_array = to_numpy(edges), to_numpy(counts)
    if edges_array.ndim != 1 or edges_array.shape[0] < 2:
        raise ValueError(
            f"{where}: edges must be 1-D with at least 2 values (B+1 bin edges), got shape "
            f"{tuple(edges_array.shape)}"
        )
    if counts_array.shape != (edges_array.shape[0] - 1,):
        raise ValueError(
            f"{where}: counts must have shape ({edges_array.shape[0] - 1},) = len(edges) - 1, "
            f"got {tuple(counts_array.shape)}; pass one count per bin"
        )
    if edges_array.dtype.kind not in "fiu" or counts_array.dtype.kind not in "fiub":
        raise TypeError(
            f"{where}: edges and counts must be numeric, got dtypes {edges_array.dtype} and "
            f"{counts_array.dtype}"
        )
    edges_dtype = _FLOAT_DTYPES.get(edges_array.dtype, "<f8")
    edges_array = edges_array.astype(edges_dtype, copy=False)
    if np.isnan(edges_array).any() or (np.diff(edges_array) < 0).any():
        raise ValueError(f"{where}: edges must be non-decreasing and not NaN, got {edges_array}")
    if counts_array.dtype.kind in "iub":
        counts_dtype = "<i8"
    else:
        counts_dtype = _FLOAT_DTYPES.get(counts_array.dtype, "<f8")
    counts_array = counts_array.astype(counts_dtype, copy=False)
    if not (counts_array >= 0).all():  # also rejects NaN
        raise ValueError(f"{where}: counts must be non-negative and not NaN, got {counts_array}")
    return edges_array.tobytes(), edges_dtype, counts_array.tobytes(), counts_dtype


def decode_histogram(
    edges: bytes, edges_dtype: str, counts: bytes, counts_dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """Unpack to (edges float64, counts int64 or float64), writable copies."""
    edges_array = np.frombuffer(edges, dtype=edges_dtype).astype(np.float64)
    counts_array = np.frombuffer(counts, dtype=counts_dtype)
    target = np.int64 if counts_array.dtype.kind == "i" else np.float64
    return edges_array, counts_array.astype(target)
