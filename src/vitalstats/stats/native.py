"""The CPU statistics kernels in C (``_native.c``), compiled at first use.

On the CPU the exact raw summary (``summary.raw_summary``) costs four to six ATen passes
over a tensor and some fifteen small ops; Inductor's CPU reductions are slower still
(``kernels``). ``_native.c`` does the same maths in two passes (the sum for the shift K,
then sum(x - K), sum((x - K)^2), min and max in one fused loop; the NaN/Inf count only when
those came out non-finite), and Adam's moment sums in one, for a whole list of tensors in
one call. Its sums run in independent lanes folded into float64 every 2048 values, so they
are more accurate than ATen's float32 reductions (tests/stats/test_native.py measures both
against float64). It also holds vitalstats.nn's BatchNorm kernels for float32 input laid out
as rows of channels ((N, C), channels-last): statistics from float64 sums, the output and
the backward, each in two passes (``batch_norm_rows_forward``/``_backward``); and the two
small steps around torch's own BatchNorm kernel (``vs_copy_pair``, the running buffers'
snapshot; ``vs_batch_norm_variance_from_invstd``, the batch variance, the non-finite check
and the count), called from ``vitalstats.nn._batch_norm``.

The library is built once per machine with the system C compiler (``cc``, ``gcc`` or
``clang``; ``$CC`` wins), about a second, and cached by the hash of its source and flags in
``$VITALSTATS_CACHE_DIR`` or ``~/.cache/vitalstats`` (builds of other versions unused for a
week are removed). Where that is impossible (no
compiler, a read-only home, an exotic platform) ``library()`` returns None and says why in
``status()``; callers then use the eager kernels. The kernels are single-threaded, so
``supports`` takes a tensor only where ATen would run one thread too (``torch`` set to one
intra-op thread, or fewer values than ATen's parallel grain). float32, float64 and bfloat16
tensors whose values are dense in memory (contiguous or channels-last) are supported.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("_native.c")
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2}
EXTREMES, COUNT_NONFINITE = 1, 2  # flags of vs_raw_summaries
_PARALLEL_GRAIN = 32768  # at::internal::GRAIN_SIZE: smaller reductions run on one thread

_lock = threading.Lock()
_state: dict[str, object] = {}


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _arch_flags() -> list[str]:
    """The vector ISA torch itself dispatches to (its kernels were checked on this CPU)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    capability = torch.backends.cpu.get_cpu_capability()
    return {"AVX512": ["-march=x86-64-v4"], "AVX2": ["-march=x86-64-v3"]}.get(capability, [])


def _cache_dir() -> Path:
    configured = os.environ.get("VITALSTATS_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vitalstats"


def _build(compiler: str, flags: list[str]) -> Path:
    """The cached shared library for these flags, compiled first if missing (atomically:
    concurrent processes each write a temporary file and rename it into place)."""
    source = _SOURCE.read_bytes()
    stat = os.stat(compiler)
    key = hashlib.sha256(
        source + " ".join([compiler, str(stat.st_mtime_ns), *flags]).encode()
    ).hexdigest()[:16]
    directory = _cache_dir()
    target = directory / f"native-{key}.so"
    if target.exists():
        with contextlib.suppress(OSError):  # marks it used (see _prune); read-only caches too
            os.utime(target)
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        command = [compiler, *flags, "-o", temporary, str(_SOURCE)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()[:300]}")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    _prune(directory, keep=target)
    return target


_STALE_SECONDS = 7 * 24 * 3600


def _prune(directory: Path, keep: Path) -> None:
    """Remove other builds not touched for a week (older sources or flags). A process that
    still has one loaded keeps its mapping; one that needs it again rebuilds it."""
    now = time.time()
    for old in directory.glob("native-*.so"):
        try:
            if old != keep and now - old.stat().st_mtime > _STALE_SECONDS:
                old.unlink()
        except OSError:  # another process pruned it first, or no permission: leave it
            pass


def _load() -> ctypes.CDLL:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set $CC, or install gcc or clang)")
    base = ["-O3", "-std=c99", "-fno-math-errno", "-fPIC", "-shared"]
    try:
        path = _build(compiler, base + _arch_flags())
    except (RuntimeError, OSError, subprocess.SubprocessError):
        path = _build(compiler, base)  # an older compiler without the -march level
    lib = ctypes.CDLL(str(path))
    pointer = ctypes.c_void_p
    lib.vs_raw_summaries.argtypes = [ctypes.c_int64, pointer, pointer, pointer, ctypes.c_int32,
                                     pointer, pointer]  # fmt: skip
    lib.vs_raw_summaries.restype = None
    lib.vs_adam_sums.argtypes = [ctypes.c_int64, pointer, pointer, pointer, pointer, pointer,
                                 pointer]  # fmt: skip
    lib.vs_adam_sums.restype = None
    lib.vs_histograms.argtypes = [ctypes.c_int64, pointer, pointer, pointer, pointer,
                                  ctypes.c_int32, ctypes.c_double, ctypes.c_double,
                                  ctypes.c_int32, pointer]  # fmt: skip
    lib.vs_histograms.restype = None
    lib.vs_feature_summaries.argtypes = [pointer, ctypes.c_int32, ctypes.c_int64, ctypes.c_int64,
                                         ctypes.c_int64, pointer]  # fmt: skip
    lib.vs_feature_summaries.restype = ctypes.c_int
    lib.vs_fused_summaries.argtypes = [ctypes.c_int64, pointer, pointer, pointer, pointer,
                                       pointer, pointer, pointer]  # fmt: skip
    lib.vs_fused_summaries.restype = None
    lib.vs_batch_norm_rows_forward.argtypes = [pointer, ctypes.c_int64, ctypes.c_int64, pointer,
                                               pointer, ctypes.c_double, pointer, pointer,
                                               pointer, pointer, pointer]  # fmt: skip
    lib.vs_batch_norm_rows_forward.restype = ctypes.c_int
    lib.vs_batch_norm_rows_backward.argtypes = [pointer, pointer, ctypes.c_int64, ctypes.c_int64,
                                                pointer, pointer, pointer, pointer, pointer,
                                                pointer]  # fmt: skip
    lib.vs_batch_norm_rows_backward.restype = ctypes.c_int
    lib.vs_batch_norm_variance_from_invstd.argtypes = [pointer, ctypes.c_int32, ctypes.c_int64,
                                                       ctypes.c_float, ctypes.c_int32, pointer,
                                                       pointer]  # fmt: skip
    lib.vs_batch_norm_variance_from_invstd.restype = ctypes.c_int
    lib.vs_copy_pair.argtypes = [pointer, pointer, ctypes.c_int64, pointer]
    lib.vs_copy_pair.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, built on first call; None where they cannot be (``status``)."""
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                try:
                    _state["lib"] = _load()
                    _state["why"] = f"C kernels built with {_compiler()} in {_cache_dir()}"
                except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                    _state["lib"] = None
                    _state["why"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    return _state["lib"]  # type: ignore[return-value]


def status() -> tuple[bool, str]:
    """(whether the C kernels run in this process, a one-line reason)."""
    return library() is not None, str(_state["why"])


def dense(x: torch.Tensor) -> bool:
    """True when ``x``'s values fill ``x.numel()`` consecutive elements of memory."""
    if x.is_contiguous():
        return True
    if x.dim() == 4:
        return x.is_contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.is_contiguous(memory_format=torch.channels_last_3d)
    return False


try:  # torch.func's grad/vmap wrappers: plain torch.Tensor in Python, but no data pointer
    from torch._C._functorch import is_functorch_wrapped_tensor as _is_wrapped
except ImportError:  # pragma: no cover - a torch without functorch

    def _is_wrapped(x: torch.Tensor) -> bool:
        return False


try:  # vmap's batched wrappers among them
    from torch._C._functorch import is_batchedtensor as _is_batched
except ImportError:  # pragma: no cover - a torch without functorch

    def _is_batched(x: torch.Tensor) -> bool:
        return False


def vmap_batched(x: torch.Tensor) -> bool:
    """Whether ``x`` is a torch.func.vmap batched tensor (False while torch.compile traces)."""
    return not torch.compiler.is_compiling() and _is_batched(x)


def functorch_wrapped(x: torch.Tensor) -> bool:
    """Whether ``x`` is a torch.func grad/vmap wrapper (False while torch.compile traces,
    which cannot call the check and handles the transforms itself)."""
    return not torch.compiler.is_compiling() and _is_wrapped(x)


def supports(x: torch.Tensor) -> bool:
    """Whether the C kernels take ``x`` (CPU, float32/float64/bfloat16, dense, a plain
    tensor with its own memory (not a torch.func grad/vmap wrapper), outside a traced graph,
    and one thread's worth of work)."""
    return (
        x.device.type == "cpu"
        and x.dtype in DTYPE_CODES
        and type(x) is torch.Tensor
        and not torch.compiler.is_compiling()
        and not _is_wrapped(x)  # before dense(): vmap cannot answer it
        and dense(x)
        and (x.numel() < _PARALLEL_GRAIN or torch.get_num_threads() == 1)
    )


def _array(kind: type, values: list) -> ctypes.Array:
    return (kind * len(values))(*values)


def raw_summaries(
    tensors: list[torch.Tensor],
    *,
    extremes: bool = True,
    count_nonfinite: bool = True,
    hints: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(P, 7)`` float64 ``summary.RAW_FIELDS`` of each tensor (every one ``supports``),
    in one call. ``hints``: a contiguous float64 ``(P,)`` CPU tensor of proposed shifts (NaN:
    none), e.g. what the previous call left in it: where a tensor's mean is within one
    standard deviation of its hint, one pass over it is enough (else two, as without); the
    call overwrites each hint with the tensor's mean. ``library()`` must not be None."""
    lib = library()
    assert lib is not None, "vitalstats.stats.native.raw_summaries: the C kernels are unavailable"
    flags = (EXTREMES if extremes else 0) | (COUNT_NONFINITE if count_nonfinite else 0)
    out = torch.empty((len(tensors), 7), dtype=torch.float64)
    if hints is not None:
        assert (
            hints.dtype == torch.float64 and hints.is_contiguous() and hints.numel() == len(tensors)
        )
    lib.vs_raw_summaries(
        len(tensors),
        _array(ctypes.c_void_p, [t.data_ptr() for t in tensors]),
        _array(ctypes.c_int64, [t.numel() for t in tensors]),
        _array(ctypes.c_int32, [DTYPE_CODES[t.dtype] for t in tensors]),
        flags,
        None if hints is None else hints.data_ptr(),
        out.data_ptr(),
    )
    return out


def adam_sums(
    first: list[torch.Tensor],
    second: list[torch.Tensor],
    params: list[torch.Tensor | None],
    eps: list[float],
) -> torch.Tensor:
    """``(P, 4)`` float64 ``[sum |m|, sum sqrt(v), sum (m / (sqrt(v) + eps))^2, sum
    theta^2]`` of float32 moments ``m``, ``v`` and parameters ``theta`` (all ``supports``,
    float32, alike in shape; a None parameter gives NaN)."""
    lib = library()
    assert lib is not None, "vitalstats.stats.native.adam_sums: the C kernels are unavailable"
    out = torch.empty((len(first), 4), dtype=torch.float64)
    lib.vs_adam_sums(
        len(first),
        _array(ctypes.c_void_p, [t.data_ptr() for t in first]),
        _array(ctypes.c_void_p, [t.data_ptr() for t in second]),
        _array(ctypes.c_void_p, [None if t is None else t.data_ptr() for t in params]),
        _array(ctypes.c_int64, [t.numel() for t in first]),
        _array(ctypes.c_float, eps),
        out.data_ptr(),
    )
    return out


def histograms(
    tensors: list[torch.Tensor],
    layouts: list[tuple[int, int, int]],
    bins: int,
    value_range: tuple[float, float],
    log10_abs: bool = False,
) -> torch.Tensor:
    """``(P, bins)`` float32 counts of a sample of each (contiguous, ``supports``) tensor:
    ``layouts[i] = (run, runs, step)``, ``runs`` runs of ``run`` consecutive values starting
    every ``step`` values, binned as ``vitalstats.monitor.probes.histograms`` bins a sample
    (the same float32 arithmetic; log10 |v| by comparing |v| with the bin edges), without
    copying the sample out first."""
    lib = library()
    assert lib is not None, "vitalstats.stats.native.histograms: the C kernels are unavailable"
    out = torch.empty((len(tensors), bins), dtype=torch.float32)
    lib.vs_histograms(
        len(tensors),
        _array(ctypes.c_void_p, [t.data_ptr() for t in tensors]),
        _array(ctypes.c_int64, [t.numel() for t in tensors]),
        _array(ctypes.c_int32, [DTYPE_CODES[t.dtype] for t in tensors]),
        _array(ctypes.c_int64, [value for layout in layouts for value in layout]),
        bins,
        float(value_range[0]),
        float(value_range[1]),
        int(log10_abs),
        out.data_ptr(),
    )
    return out


def feature_layout(x: torch.Tensor, dim: int) -> tuple[int, int, int] | None:
    """``(outer, features, inner)``: how ``x``'s values lie in memory around dimension
    ``dim`` (contiguous, or channels-last with ``dim`` the channels); None otherwise."""
    dim = dim % x.dim()
    if x.is_contiguous():
        return math.prod(x.shape[:dim]), x.shape[dim], math.prod(x.shape[dim + 1 :])
    if dim == 1 and x.dim() in (4, 5) and dense(x):  # channels last: (N, *spatial, C)
        return x.numel() // x.shape[1], x.shape[1], 1
    return None


def feature_summaries(x: torch.Tensor, layout: tuple[int, int, int]) -> torch.Tensor:
    """``(F + 1, 7)`` float64 raw summaries of each feature of ``x`` (``supports``, non-empty)
    laid out as ``feature_layout`` says, and in the last row the whole tensor's (the
    features' exact merge). Two passes over ``x``."""
    lib = library()
    assert lib is not None, (
        "vitalstats.stats.native.feature_summaries: the C kernels are unavailable"
    )
    outer, features, inner = layout
    out = torch.empty((features + 1, 7), dtype=torch.float64)
    code = lib.vs_feature_summaries(x.data_ptr(), DTYPE_CODES[x.dtype], outer, features, inner,
                                    out.data_ptr())  # fmt: skip
    if code != 0:
        raise MemoryError(f"vitalstats.stats.native.feature_summaries: {features} features")
    return out


def fused_summaries(
    tensors: list[torch.Tensor],
    hints: torch.Tensor,
    *,
    minus: list[torch.Tensor] | None = None,
    copy_into: list[torch.Tensor] | None = None,
    minus_squares: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(P, 7)`` raw summaries (no extremes, no NaN/Inf count) of float32 tensors, fused
    with what the monitor does next to them: of ``a - b`` for ``b`` in ``minus`` (an update,
    without writing it out; ``minus_squares``, a float64 ``(P,)`` tensor, receives each
    sum(b^2) from the same pass), or of ``a`` while copying it into ``copy_into`` (a
    snapshot). Every tensor float32, ``supports``, alike in shape and strides with its
    partner; ``hints`` as in ``raw_summaries`` (required)."""
    lib = library()
    assert lib is not None, "vitalstats.stats.native.fused_summaries: the C kernels are unavailable"
    assert hints.dtype == torch.float64 and hints.is_contiguous() and hints.numel() == len(tensors)
    if minus_squares is not None:
        assert minus is not None and minus_squares.dtype == torch.float64
        assert minus_squares.is_contiguous() and minus_squares.numel() == len(tensors)
    out = torch.empty((len(tensors), 7), dtype=torch.float64)
    lib.vs_fused_summaries(
        len(tensors),
        _array(ctypes.c_void_p, [t.data_ptr() for t in tensors]),
        None if minus is None else _array(ctypes.c_void_p, [t.data_ptr() for t in minus]),
        None if copy_into is None else _array(ctypes.c_void_p, [t.data_ptr() for t in copy_into]),
        _array(ctypes.c_int64, [t.numel() for t in tensors]),
        hints.data_ptr(),
        out.data_ptr(),
        None if minus_squares is None else minus_squares.data_ptr(),
    )
    return out


def _pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def batch_norm_rows_forward(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training BatchNorm of float32 ``x`` whose values lie as (rows, C) rows in memory (a
    contiguous (N, C) tensor, or channels-last with C = x.shape[1]): (y like x, mean, biased
    var, unbiased var, invstd), the statistics (C,) float32 from float64 sums (one pass about
    the first row, a second about the mean where that shift was poor). ``weight``/``bias``:
    contiguous float32 (C,) or None. No autograd."""
    lib = library()
    assert lib is not None, "vitalstats.stats.native: the C kernels are unavailable"
    channels = x.shape[1]
    y = torch.empty_like(x)
    mean, var, unbiased, invstd = torch.empty((4, channels), dtype=torch.float32).unbind(0)
    code = lib.vs_batch_norm_rows_forward(
        x.data_ptr(), x.numel() // channels, channels, _pointer(weight), _pointer(bias),
        float(eps), y.data_ptr(), mean.data_ptr(), var.data_ptr(), unbiased.data_ptr(),
        invstd.data_ptr(),
    )  # fmt: skip
    if code != 0:
        raise MemoryError(f"vitalstats.stats.native.batch_norm_rows_forward: {channels} channels")
    return y, mean, var, unbiased, invstd


def batch_norm_rows_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    weight: torch.Tensor | None,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dx, dw, db) of ``batch_norm_rows_forward`` (``grad_out`` laid out as ``x``), each
    None where ``needs`` says it is not wanted (dw also without a weight)."""
    lib = library()
    assert lib is not None, "vitalstats.stats.native: the C kernels are unavailable"
    channels = x.shape[1]
    dx = torch.empty_like(x) if needs[0] else None
    dw = torch.empty(channels, dtype=torch.float32) if needs[1] and weight is not None else None
    db = torch.empty(channels, dtype=torch.float32) if needs[2] else None
    code = lib.vs_batch_norm_rows_backward(
        grad_out.data_ptr(), x.data_ptr(), x.numel() // channels, channels, mean.data_ptr(),
        invstd.data_ptr(), _pointer(weight), _pointer(dx), _pointer(dw), _pointer(db),
    )  # fmt: skip
    if code != 0:
        raise MemoryError(f"vitalstats.stats.native.batch_norm_rows_backward: {channels} channels")
    return dx, dw, db
