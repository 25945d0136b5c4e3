"""Warn once when a device-side flag turns true, without a per-step host sync.

On the CPU reading a flag costs nothing. On an accelerator the flag is OR-ed into a device
tensor, copied without blocking into pinned host memory behind a recorded event, and read on a
later call once the event has completed; so the warning may arrive a few steps late but never
stalls the stream.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class NonFiniteBatchWarning(RuntimeWarning):
    """A training batch had NaN/Inf statistics; the running statistics were left unchanged."""


class DeferredFlagWarning:
    """Issue ``warnings.warn(message())`` once, the first time a recorded flag is true."""

    def __init__(self) -> None:
        self.warned = False
        self._seen: Tensor | None = None
        self._host: Tensor | None = None
        self._event: Any = None

    def record(self, flag: Tensor, message: Callable[[], str]) -> None:
        """Record a 0-d bool tensor; warn (now on CPU, later on an accelerator) if it is true."""
        if self.warned:
            return
        if flag.device.type == "cpu":
            if bool(flag):
                self._warn(message)
            return
        self.poll(message)
        self._seen = flag.clone() if self._seen is None else self._seen | flag
        if self._host is None:
            self._host = torch.zeros((), dtype=torch.bool, pin_memory=True)
        self._host.copy_(self._seen, non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record()

    def warn_once(self, message: Callable[[], str]) -> None:
        """Warn now, unless this flag has warned before (a flag already read on the host)."""
        if not self.warned:
            self._warn(message)

    def record_unless(self, ok: Tensor, message: Callable[[], str]) -> None:
        """``record(~ok)``, without the extra op on the CPU."""
        if self.warned:
            return
        if ok.device.type == "cpu":
            if not bool(ok):
                self._warn(message)
            return
        self.record(~ok, message)

    def poll(self, message: Callable[[], str]) -> None:
        """Warn if an earlier flag copy has landed and was true; never blocks."""
        if self._event is not None and self._event.query() and bool(self._host):
            self._warn(message)

    def _warn(self, message: Callable[[], str]) -> None:
        self.warned = True
        warnings.warn(message(), NonFiniteBatchWarning, stacklevel=4)

    def __getstate__(self) -> dict[str, Any]:  # copies and pickles start afresh
        return {"warned": self.warned, "_seen": None, "_host": None, "_event": None}
