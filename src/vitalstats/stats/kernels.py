"""The statistics kernels, eager or compiled with ``torch.compile`` (opt-in).

``summary_kernel("eager")`` is the plain tensor code of ``summary.raw_summary``;
``summary_kernel("compiled")`` runs the same maths as a ``torch.compile``d function
(``vs.optim.moment_stats.tensor_sums_kernel`` does the same for Adam's per-tensor sums)
(dynamic shapes: one graph per kind of statistic and dtype, reused for every tensor size),
which fuse the passes over memory. Measured on one CPU core (torch 2.13, 800k float32
values): Adam's four sums 266 us compiled against 734 us eager, so they are compiled for
tensors of at least 4096 values; a summary 423 us compiled against 325 us eager (ATen's
vectorised CPU reductions beat Inductor's there), so on the CPU summaries stay eager and the
compiled summary runs on accelerators, where it saves kernel launches. The first call of each kernel compiles it (seconds; cached on disk by torch
for later processes). Where compilation is impossible (no C++ compiler for the CPU backend,
no Triton for CUDA, a torch without Inductor) the kernel warns once, naming itself and the
error, and falls back to the eager code for the rest of the process; the results agree
within float32 reordering either way.

``compile_status()`` says which path a process can use (CI prints it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch

from vitalstats.stats.summary import raw_summary

Mode = Literal["eager", "compiled"]


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
    if mode not in ("eager", "compiled"):
        raise ValueError(f"kernels: expected 'eager' or 'compiled', got {mode!r}")
    return mode  # type: ignore[return-value]


def summary_kernel(mode: Mode) -> Callable[..., torch.Tensor]:
    """``raw_summary(x, extremes=..., count_nonfinite=..., nonfinite_sample=...)`` of the
    mode (the compiled kernel counts NaN/Inf exactly, in the same fused pass)."""
    check_mode(mode)
    if mode == "eager":
        return raw_summary

    def compiled(x: torch.Tensor, *, extremes: bool = True, count_nonfinite: bool = True,
                 nonfinite_sample: int | None = None) -> torch.Tensor:  # fmt: skip
        if x.device.type == "cpu" or not x.numel():  # measured: ATen's CPU reductions win
            return raw_summary(x, extremes=extremes, count_nonfinite=count_nonfinite,
                               nonfinite_sample=nonfinite_sample)  # fmt: skip
        return _COMPILED_SUMMARY(x.detach(), extremes, count_nonfinite)

    return compiled


def compile_status() -> tuple[bool, str]:
    """(whether compiled kernels work in this process, a one-line reason)."""
    try:
        graph = torch.compile(_raw_summary_graph, dynamic=True, fullgraph=True)
        graph(torch.arange(5.0), True, True)
    except Exception as error:
        return False, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return True, f"torch.compile (inductor) works on this machine, torch {torch.__version__}"
