"""Reusable scratch tensors for the per-batch moments on CPU.

On CPU a fresh tensor of tens of megabytes is served by ``mmap`` and every page faults on
first touch, which costs more than the arithmetic (about 20 ms for 40 MB against 1.5 ms for
the subtraction itself). ``batch_moments`` therefore writes its intermediates into a per-thread
buffer that grows to the largest batch seen. On accelerators the caching allocator already
reuses memory, so plain ``torch.empty`` is used there.

The buffer holds as many elements as the largest batch passed to ``Moments.update`` in this
thread (two such buffers for half/bfloat16 input); ``release_workspace()`` frees it.
"""

from __future__ import annotations

import threading

import torch

_local = threading.local()


def scratch(slot: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Return an uninitialised contiguous tensor of ``shape``; reused between calls on CPU."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    buffers: dict[tuple[str, torch.dtype], torch.Tensor] = getattr(_local, "buffers", None) or {}
    _local.buffers = buffers
    numel = shape.numel()
    buffer = buffers.get((slot, dtype))
    if buffer is None or buffer.numel() < numel:
        buffer = torch.empty(numel, dtype=dtype)
        buffers[(slot, dtype)] = buffer
    return buffer[:numel].view(shape)


def work_like(x: torch.Tensor, dtype: torch.dtype, slot: str) -> torch.Tensor:
    """A contiguous buffer shaped like ``x``: the reused CPU scratch ``slot`` in eager mode, a
    plain temporary under ``torch.compile`` (which plans its own memory) and on accelerators."""
    if torch.compiler.is_compiling():
        return torch.empty(x.shape, dtype=dtype, device=x.device)
    return scratch(slot, x.shape, dtype, x.device)


def release_workspace() -> None:
    """Free this thread's CPU scratch buffers (they are re-created on the next update)."""
    _local.buffers = {}
