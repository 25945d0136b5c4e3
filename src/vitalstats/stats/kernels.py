"""The statistics kernels: eager, or compiled (opt-in, ``MonitorConfig(kernels="compiled")``).

``summary_kernel("eager")`` is the plain tensor code of ``summary.raw_summary``;
``summary_kernel("compiled")`` computes the same maths with fused kernels:

* on the CPU, the C kernels of ``vitalstats.stats.native`` (two passes per tensor instead of
  four to six, a whole list of tensors in one call: ``raw_summaries``), built with the system
  C compiler at first use (about a second, cached on disk). Measured on one core (torch
  2.13, 800k float32 values): a full summary 156 us against 767 us eager;
  ``vs.optim.moment_stats.tensor_sums_kernel`` uses them for Adam's sums too;
* on accelerators, ``torch.compile``d functions (dynamic shapes: one graph per kind of
  statistic and dtype), which fuse the passes and save kernel launches. Inductor's CPU
  reductions are slower than ATen's (a summary 423 us compiled against 325 us eager), so they
  are not used on the CPU.

Where a compiled kernel is impossible (no C compiler, no Triton for CUDA, a torch without
Inductor) it warns once, naming itself and the reason, and the eager code runs for the rest
of the process; the results agree within float32 rounding either way (the C kernels
accumulate in float64 blocks and are the more accurate).

``compile_status()`` says which paths a process can use (CI prints it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch

from vitalstats.stats.summary import raw_summary

Mode = Literal["auto", "eager", "compiled"]


def _raw_summary_graph(x: torch.Tensor, extremes: bool, count_nonfinite: bool) -> torch.Tensor:
    """``raw_summary`` as one traceable function (no scratch buffers, no branch on data)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    v = x.reshape(-1).to(dtype)
    n = v.numel()
    shift = v.sum() / n
    centred = v - shift
    residual = centred.sum()
    centred_sq = (centred * centred).sum()
    if extremes:
        low, high = v.amin(), v.amax()
    else:
        low, high = shift * 0 + float("inf"), shift * 0 - float("inf")
    nonfinite = (~torch.isfinite(v)).sum().to(dtype) if count_nonfinite else shift * 0
    parts = torch.stack([shift, residual, centred_sq, low, high, nonfinite]).double()
    return torch.cat([parts.new_full((1,), float(n)), parts])


class CompiledKernel:
    """A function compiled on first use, with a one-warning fallback to ``eager``."""

    def __init__(self, name: str, graph: Callable[..., Any], eager: Callable[..., Any]) -> None:
        self.name, self.graph, self.eager = name, graph, eager
        self._compiled: Callable[..., Any] | None = None
        self._failed = False

    def __call__(self, *args: Any) -> Any:
        if self._failed or torch.compiler.is_compiling():  # inside a user's graph: inline
            return self.eager(*args)
        try:
            if self._compiled is None:
                self._compiled = torch.compile(self.graph, dynamic=True, fullgraph=True)
            return self._compiled(*args)
        except Exception as error:  # no compiler, no Triton, an Inductor limitation
            self._failed = True
            warnings.warn(
                f"vitalstats: the compiled {self.name} kernel is unavailable here "
                f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); using the eager "
                "kernel (same statistics, slower)",
                RuntimeWarning,
                stacklevel=3,
            )
            return self.eager(*args)


def _eager_raw_summary(x: torch.Tensor, extremes: bool, count_nonfinite: bool) -> torch.Tensor:
    return raw_summary(x, extremes=extremes, count_nonfinite=count_nonfinite)


_COMPILED_SUMMARY = CompiledKernel("summary", _raw_summary_graph, _eager_raw_summary)


def check_mode(mode: str) -> Mode:
    if mode not in ("auto", "eager", "compiled"):
        raise ValueError(f"kernels: expected 'auto', 'eager' or 'compiled', got {mode!r}")
    return mode  # type: ignore[return-value]


def native_kernels(mode: Mode = "compiled") -> bool:
    """Whether the CPU C kernels serve ``mode`` here: ``"auto"`` and ``"compiled"`` use them
    where they build; only ``"compiled"`` (asked for explicitly) warns, once, where they
    cannot, naming the reason."""
    if mode == "eager":
        return False
    from vitalstats.stats import native

    ok, why = native.status()
    if not ok and mode == "compiled" and not _WARNED_NATIVE:
        _WARNED_NATIVE.append(why)
        warnings.warn(
            f"vitalstats: the compiled CPU statistics kernels are unavailable here ({why}); "
            "using the eager kernels (same statistics, slower)",
            RuntimeWarning,
            stacklevel=3,
        )
    return ok


_WARNED_NATIVE: list[str] = []


def _eager_summary(x: torch.Tensor, *, extremes: bool = True, count_nonfinite: bool = True,
                   nonfinite_sample: int | None = None,
                   hints: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    return raw_summary(x, extremes=extremes, count_nonfinite=count_nonfinite,
                       nonfinite_sample=nonfinite_sample)  # fmt: skip


def summary_kernel(mode: Mode) -> Callable[..., torch.Tensor]:
    """``raw_summary(x, extremes=..., count_nonfinite=..., nonfinite_sample=..., hints=...)``
    of the mode. The compiled kernels count NaN/Inf exactly, whatever ``nonfinite_sample``
    says, and on the CPU use ``hints`` (a float64 ``(1,)`` tensor, see
    ``native.raw_summaries``) to summarise in one pass; the eager kernel ignores them."""
    check_mode(mode)
    if mode == "eager":
        return _eager_summary

    def fused(x: torch.Tensor, *, extremes: bool = True, count_nonfinite: bool = True,
                 nonfinite_sample: int | None = None,
                 hints: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        x = x.detach()
        if x.device.type == "cpu" or not x.numel():
            from vitalstats.stats import native

            if native.supports(x) and native_kernels(mode):
                return native.raw_summaries(
                    [x], extremes=extremes, count_nonfinite=count_nonfinite, hints=hints
                )[0]
        elif mode == "compiled":
            return _COMPILED_SUMMARY(x, extremes, count_nonfinite)
        return raw_summary(x, extremes=extremes, count_nonfinite=count_nonfinite,
                           nonfinite_sample=nonfinite_sample)  # fmt: skip

    return fused


def raw_summaries(
    tensors: list[torch.Tensor | None],
    mode: Mode = "eager",
    *,
    extremes: bool = True,
    count_nonfinite: bool = True,
    hints: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(P, 7)`` raw summaries of a list of tensors (None: the empty summary), on the first
    tensor's device. ``"auto"`` and ``"compiled"`` run every CPU tensor the C kernels take in
    one call;
    ``hints``: float64 ``(P,)`` proposed shifts for them (``native.raw_summaries``)."""
    device = next(t.device for t in tensors if t is not None)
    rows: list[torch.Tensor | None] = [None] * len(tensors)
    if mode != "eager" and device.type == "cpu":
        from vitalstats.stats import native

        native_rows = [
            i for i, t in enumerate(tensors) if t is not None and native.supports(t.detach())
        ]
        if native_rows and native_kernels(mode):
            every = len(native_rows) == len(tensors)
            picked = hints if every or hints is None else hints[native_rows]
            block = native.raw_summaries(
                [tensors[i].detach() for i in native_rows],  # type: ignore[union-attr]
                extremes=extremes,
                count_nonfinite=count_nonfinite,
                hints=picked,
            )
            if every:
                return block
            if hints is not None:
                hints[native_rows] = picked  # type: ignore[index]
            for i, row in zip(native_rows, block):
                rows[i] = row
    empty, summary = None, summary_kernel(mode)
    for i, t in enumerate(tensors):
        if rows[i] is not None:
            continue
        if t is None:
            if empty is None:
                empty = raw_summary(torch.zeros(0, device=device))
            rows[i] = empty
        else:
            rows[i] = summary(t, extremes=extremes, count_nonfinite=count_nonfinite)
    return torch.stack(rows)  # type: ignore[arg-type]


def compile_status() -> tuple[bool, str]:
    """(whether compiled kernels work in this process, a one-line reason naming the CPU C
    kernels' and torch.compile's state)."""
    from vitalstats.stats import native

    native_ok, native_why = native.status()
    try:
        graph = torch.compile(_raw_summary_graph, dynamic=True, fullgraph=True)
        graph(torch.arange(5.0), True, True)
    except Exception as error:
        inductor = (
            f"torch.compile unavailable: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        )
        return native_ok, f"CPU: {native_why}; {inductor}"
    inductor = f"torch.compile (inductor) works on this machine, torch {torch.__version__}"
    return True, f"CPU: {native_why}; {inductor}"
