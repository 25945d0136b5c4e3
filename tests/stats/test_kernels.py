"""Compiled statistics kernels agree with the eager ones; the fallback is clean."""

from __future__ import annotations

import warnings

import pytest
import torch

from vitalstats.monitor.metrics import finalize
from vitalstats.optim.moment_stats import tensor_sums_kernel
from vitalstats.stats import kernels
from vitalstats.stats.kernels import CompiledKernel, compile_status, summary_kernel


@pytest.fixture(scope="module")
def compiled_available():
    ok, reason = compile_status()
    print(f"\ncompiled statistics kernels: {'available' if ok else 'unavailable'} ({reason})")
    if not ok:
        pytest.skip(f"torch.compile cannot build kernels here: {reason}")
    return ok


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(7,), (128, 33), (4, 3, 17, 5)])
def test_compiled_summary_equals_eager_within_float32_reordering(compiled_available, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3 + 50
    x.view(-1)[1] = float("inf")
    eager = finalize(summary_kernel("eager")(x).numpy())
    compiled = finalize(summary_kernel("compiled")(x).numpy())
    assert compiled[0] == eager[0] and compiled[5] == eager[5] == 1  # counts are exact
    y = x.clone()
    y.view(-1)[1] = 0.0
    eager = finalize(summary_kernel("eager")(y, extremes=True).numpy())
    compiled = finalize(summary_kernel("compiled")(y, extremes=True).numpy())
    assert compiled[1] == pytest.approx(eager[1], rel=1e-6)
    assert compiled[2] == pytest.approx(eager[2], rel=1e-5)
    assert (compiled[3], compiled[4]) == (eager[3], eager[4])


@pytest.mark.slow
def test_compiled_adam_sums_equal_eager(compiled_available):
    g = torch.Generator().manual_seed(1)
    m, v, theta = torch.randn(1000, generator=g), torch.rand(1000, generator=g), torch.randn(1000)
    eager = tensor_sums_kernel("eager")([m], [v], [theta], [1e-8], [None])
    compiled = tensor_sums_kernel("compiled")([m], [v], [theta], [1e-8], [None])
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=0)


def test_a_kernel_that_cannot_compile_warns_once_and_falls_back(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(kernels.torch, "compile", broken_compile)
    kernel = CompiledKernel("test", lambda x: x * 2, lambda x: x + x)
    with pytest.warns(RuntimeWarning, match="compiled test kernel is unavailable.*no C\\+\\+"):
        assert torch.equal(kernel(torch.ones(2)), torch.full((2,), 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(kernel(torch.ones(3)), torch.full((3,), 2.0))  # no second warning


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="'eager' or 'compiled'"):
        summary_kernel("fast")
