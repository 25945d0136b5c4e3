"""The CPU C kernels: raw summaries, Adam sums and histograms against float64 and eager."""

from __future__ import annotations

import math
import os
import time
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalstats.monitor import probes
from vitalstats.optim.moment_stats import _tensor_sums
from vitalstats.stats import kernels, native
from vitalstats.stats.summary import finalize, raw_summary


@pytest.fixture(scope="module", autouse=True)
def built():
    ok, why = native.status()
    print(f"\nCPU C statistics kernels: {'available' if ok else 'unavailable'} ({why})")
    if not ok:
        pytest.skip(f"the C kernels cannot be built here: {why}")


def _reference(x: torch.Tensor) -> torch.Tensor:
    """count, mean, M2, min, max, nonfinite of x in float64, by the textbook two-pass."""
    v = x.detach().double().reshape(-1)
    mean = v.mean()
    return torch.stack([torch.tensor(float(v.numel()), dtype=torch.float64), mean,
                        (v - mean).square().sum(), v.min(), v.max(),
                        (~torch.isfinite(v)).sum().double()])  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    shape=st.sampled_from([(1,), (7,), (33, 65), (2048,), (2049,), (3, 5, 7, 11), (70000,)]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    log_scale=st.floats(-6, 4),
    offset=st.sampled_from([0.0, 1.0, -3e3, 1e-6]),
    seed=st.integers(0, 2**16),
)
def test_raw_summaries_match_float64(shape, dtype, log_scale, offset, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 10**log_scale + offset).to(dtype)
    ref = _reference(x)
    got = finalize(native.raw_summaries([x]))[0]
    assert got[0] == ref[0] and got[5] == 0
    assert (got[3], got[4]) == (ref[3], ref[4])  # min, max exact
    spread = math.sqrt(float(ref[2] / ref[0]))
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-6}[dtype]
    assert abs(float(got[1] - ref[1])) <= tol * (abs(float(ref[1])) + spread) + 1e-300
    assert abs(float(got[2] - ref[2])) <= 1e2 * tol * float(ref[2]) + 1e-300
    # and never worse than the eager ATen kernels by more than float32 rounding
    eager = finalize(raw_summary(x))
    assert abs(float(got[2] - ref[2])) <= abs(float(eager[2] - ref[2])) + 1e-5 * float(ref[2])


def test_constant_tensors_have_zero_spread_whatever_the_hint():
    x = torch.full((5000,), 0.1)
    for hint in (float("nan"), 0.1, 0.0999, 7.0):
        hints = torch.tensor([hint], dtype=torch.float64)
        row = finalize(native.raw_summaries([x], hints=hints))[0]
        assert row[2] == 0.0 and row[1] == pytest.approx(0.1, rel=1e-7)
        assert hints[0] == pytest.approx(0.1, rel=1e-7)  # the next hint is the mean


def test_a_hint_gives_the_two_pass_answer_and_becomes_the_mean():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(100_000, generator=g) * 1e-3 + 1.0  # mean^2 / var = 1e6: the hard case
    ref = _reference(x)
    hints = torch.full((1,), float("nan"), dtype=torch.float64)
    first = finalize(native.raw_summaries([x], hints=hints))[0]
    assert hints[0] == pytest.approx(float(ref[1]), rel=1e-9)
    for proposed in (
        hints.clone(),
        torch.tensor([1.0005], dtype=torch.float64),  # within std
        torch.tensor([50.0], dtype=torch.float64),
    ):  # far: two passes again
        again = finalize(native.raw_summaries([x], hints=proposed))[0]
        assert float(again[2]) == pytest.approx(float(ref[2]), rel=1e-6)
        assert float(again[1]) == pytest.approx(float(ref[1]), rel=1e-9)
    assert float(first[2]) == pytest.approx(float(ref[2]), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_nan_and_inf_propagate_as_in_eager(dtype):
    x = torch.randn(3000, dtype=torch.float64).to(dtype)
    x[10], x[20], x[30] = float("nan"), float("inf"), -float("inf")
    got = native.raw_summaries([x])[0]
    eager = raw_summary(x)
    assert got[6] == eager[6] == 3
    assert torch.isnan(got[4:6]).all() and torch.isnan(eager[4:6]).all()
    y = torch.randn(3000, dtype=torch.float64).to(dtype)
    y[5] = -float("inf")
    got = native.raw_summaries([y])[0]
    assert got[4] == -float("inf") and got[6] == 1 and not math.isfinite(float(got[3]))
    assert native.raw_summaries([y], count_nonfinite=False)[0, 6] == 0


def test_options_empty_tensors_and_layouts():
    x = torch.randn(4, 6, 5, 3).to(memory_format=torch.channels_last)
    assert native.supports(x)
    got = finalize(native.raw_summaries([x, torch.zeros(0)], extremes=False))
    assert got[0, 3] == math.inf and got[0, 4] == -math.inf  # no extremes asked for
    assert got[1].tolist() == [0.0, 0.0, 0.0, math.inf, -math.inf, 0.0]
    torch.testing.assert_close(got[0, :3], _reference(x)[:3], rtol=1e-6, atol=0)
    assert not native.supports(torch.randn(6, 8)[:, ::2])  # not dense
    assert native.feature_layout(torch.randn(4, 6).t(), 1) is None  # transposed: no layout
    assert not native.supports(torch.randn(3, dtype=torch.float16))
    assert not native.supports(torch.randn(3, dtype=torch.complex64))


def test_big_tensors_go_to_aten_when_torch_runs_several_threads(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert native.supports(torch.randn(100))  # below ATen's parallel grain: one thread anyway
    assert not native.supports(torch.randn(100_000))


def test_the_list_kernel_mixes_native_and_eager_rows():
    tensors = [torch.randn(50), None, torch.randn(9, dtype=torch.float16), torch.randn(7, 3)]
    hints = torch.full((4,), float("nan"), dtype=torch.float64)
    got = kernels.raw_summaries(tensors, "auto", hints=hints)
    eager = kernels.raw_summaries(tensors, "eager")
    torch.testing.assert_close(finalize(got), finalize(eager), rtol=1e-5, atol=1e-6)
    assert torch.isnan(hints[1]) and torch.isnan(hints[2]) and not torch.isnan(hints[0])


def test_adam_sums_match_float64():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(300_001, generator=g) * 1e-3
    v = torch.rand(300_001, generator=g) * 1e-6
    theta = torch.randn(300_001, generator=g)
    eps = 1e-8
    got = native.adam_sums([m, m[:5]], [v, v[:5]], [theta, None], [eps, eps])
    md, vd = m.double(), v.double()
    step = md / (vd.sqrt() + eps)
    ref = torch.stack([md.abs().sum(), vd.sqrt().sum(), step.square().sum(),
                       theta.double().square().sum()])  # fmt: skip
    torch.testing.assert_close(got[0], ref, rtol=1e-6, atol=0)
    assert torch.isnan(got[1, 3])
    eager = _tensor_sums(m, v, theta, eps, None)
    torch.testing.assert_close(got[0], eager, rtol=1e-3, atol=0)  # eager: float32 sums


@pytest.mark.parametrize("log10_abs", [False, True])
def test_histograms_bin_the_strided_sample_as_the_eager_code(log10_abs):
    g = torch.Generator().manual_seed(5)
    tensors = [torch.randn(20_000, generator=g) * 3, torch.randn(100, 33, generator=g) * 1e-4,
               torch.zeros(10), torch.randn(5, dtype=torch.float64)]  # fmt: skip
    tensors[0][::997] = float("nan")
    tensors[0][1::991] = float("inf")
    value_range = (-12.0, 2.0) if log10_abs else (-5.0, 5.0)
    got = probes.histogram_counts(tensors, 64, value_range, 4096, log10_abs, kernels="auto")
    eager = probes.histogram_counts(tensors, 64, value_range, 4096, log10_abs, kernels="eager")
    assert got.shape == eager.shape == (4, 64)
    assert got.sum(1).tolist() == eager.sum(1).tolist()  # every sampled value, NaN left out
    assert (got - eager).abs().sum() <= 2 * 2  # at most a value or two on a bin edge moves


def test_unavailable_kernels_fall_back_auto_silently_compiled_with_one_warning(monkeypatch):
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_compiler", lambda: None)
    monkeypatch.setattr(kernels, "_WARNED_NATIVE", [])
    assert native.library() is None
    ok, why = native.status()
    assert not ok and "no C compiler" in why
    x = torch.randn(100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = kernels.summary_kernel("auto")(x)
    with pytest.warns(RuntimeWarning, match="compiled CPU statistics kernels are unavailable"):
        compiled = kernels.summary_kernel("compiled")(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels.summary_kernel("compiled")(x)  # warned once
    assert torch.equal(auto, raw_summary(x)) and torch.equal(compiled, raw_summary(x))


def test_the_build_is_cached_and_rebuilt_for_new_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("VITALSTATS_CACHE_DIR", str(tmp_path))
    compiler = native._compiler()
    first = native._build(compiler, ["-O1", "-std=c99", "-fPIC", "-shared"])
    assert first.exists() and first.parent == tmp_path
    assert native._build(compiler, ["-O1", "-std=c99", "-fPIC", "-shared"]) == first
    other = native._build(compiler, ["-O2", "-std=c99", "-fPIC", "-shared"])
    assert other != first and other.exists()
    assert not list(tmp_path.glob("*.so.tmp*")) and len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize(
    ("shape", "dim", "channels_last"),
    [((128, 37), 1, False), ((8, 5, 33), 2, False), ((6, 3, 9, 11), 1, False),
     ((6, 3, 9, 11), 1, True), ((2, 4, 3, 5, 7), 1, False)],
)  # fmt: skip
def test_feature_summaries_match_float64_per_feature_and_merged(shape, dim, channels_last):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=g, dtype=torch.float64).mul(3).add(40).float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if dim == 1:
        x[(0,) * x.dim()] = float("inf")
    layout = native.feature_layout(x, dim)
    assert layout is not None
    got = finalize(native.feature_summaries(x, layout))
    columns = x.movedim(dim, -1).reshape(-1, shape[dim]).double()
    for f in range(shape[dim]):
        column = columns[:, f]
        ref = _reference(column)
        assert got[f, 0] == ref[0] and got[f, 5] == ref[5]
        assert (got[f, 3], got[f, 4]) == (ref[3], ref[4])
        if torch.isfinite(column).all():
            assert float(got[f, 1]) == pytest.approx(float(ref[1]), rel=1e-7)
            assert float(got[f, 2]) == pytest.approx(float(ref[2]), rel=1e-5)
    whole = _reference(x)
    assert got[-1, 0] == whole[0] and got[-1, 5] == whole[5]
    assert (got[-1, 3], got[-1, 4]) == (whole[3], whole[4])
    if torch.isfinite(x).all():
        assert float(got[-1, 2]) == pytest.approx(float(whole[2]), rel=1e-6)


def test_a_new_build_removes_builds_unused_for_a_week(tmp_path, monkeypatch):
    monkeypatch.setenv("VITALSTATS_CACHE_DIR", str(tmp_path))
    stale, recent = tmp_path / "native-0000000000000000.so", tmp_path / "native-1111111111111111.so"
    stale.write_bytes(b"old")
    recent.write_bytes(b"new")
    week = 8 * 24 * 3600
    os.utime(stale, (time.time() - week, time.time() - week))
    built = native._build(native._compiler(), ["-O1", "-std=c99", "-fPIC", "-shared"])
    assert built.exists() and recent.exists() and not stale.exists()


def _batch_norm_float64(x, w, b, dy, eps):
    """Forward statistics and output, and the backward, in float64 from the definitions."""
    x, dy = x.double(), dy.double()
    mean, var = x.mean(0), x.var(0, unbiased=False)
    invstd = (var + eps).rsqrt()
    x_hat = (x - mean) * invstd
    scale = invstd * (w.double() if w is not None else 1.0)
    y = x_hat * (w.double() if w is not None else 1.0) + (b.double() if b is not None else 0.0)
    n = x.shape[0]
    dx = scale * (dy - dy.mean(0) - x_hat * (dy * x_hat).mean(0))
    return y, mean, var, var * n / (n - 1), invstd, dx, (dy * x_hat).sum(0), dy.sum(0)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.sampled_from([2, 3, 64, 257]),
    channels=st.sampled_from([1, 5, 64, 130]),
    log_scale=st.floats(-4, 3),
    offset=st.sampled_from([0.0, 40.0, -3e3, 1e5]),
    affine=st.booleans(),
    outlier=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_batch_norm_rows_match_float64(rows, channels, log_scale, offset, affine, outlier, seed):
    """Statistics, output and gradients of the (rows, C) BatchNorm kernels against float64 on
    the same float32 input, also when the first row (the shift) is far from the mean: the
    statistics to float32 rounding, y and the gradients to float32 rounding times the
    problem's condition number |mean| / std."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, channels, generator=g, dtype=torch.float64) * 10**log_scale + offset
    if outlier:
        x[0] += 1e3 * 10**log_scale  # a poor shift: the kernel's second pass
    x = x.float()
    w = (torch.rand(channels, generator=g) + 0.5) if affine else None
    b = torch.randn(channels, generator=g) if affine else None
    dy = torch.randn(rows, channels, generator=g)
    y, mean, var, unbiased, invstd = native.batch_norm_rows_forward(x, w, b, 1e-5)
    dx, dw, db = native.batch_norm_rows_backward(dy, x, mean, invstd, w, (True, True, True))
    y64, mean64, var64, unbiased64, invstd64, dx64, dw64, db64 = _batch_norm_float64(
        x, w, b, dy, 1e-5
    )
    eps32 = torch.finfo(torch.float32).eps
    std = (var64 + 1e-5).sqrt()
    torch.testing.assert_close(mean.double(), mean64, rtol=eps32, atol=0)
    for got, want in ((var, var64), (unbiased, unbiased64), (invstd, invstd64)):
        torch.testing.assert_close(got.double(), want, rtol=2 * eps32, atol=0)
    condition = 1.0 + mean64.abs() / std  # per channel
    w64 = w.double() if w is not None else torch.ones(channels, dtype=torch.float64)
    assert ((y.double() - y64).abs() <= 8 * eps32 * (condition * w64 + y64.abs())).all()
    scale = (dy.double().abs().amax(0) * invstd64 * w64).clamp_min(1e-30)
    assert ((dx.double() - dx64).abs() <= 64 * eps32 * condition * scale).all()
    if affine:
        assert ((dw.double() - dw64).abs() <= 16 * eps32 * condition * rows).all()
    else:
        assert dw is None
    torch.testing.assert_close(db.double(), db64, rtol=2 * eps32, atol=1e-12)


def test_batch_norm_rows_propagate_nan_and_skip_unwanted_gradients():
    x = torch.randn(8, 3)
    x[2, 1] = float("nan")
    y, mean, var, _, _ = native.batch_norm_rows_forward(x, None, None, 1e-5)
    assert torch.isnan(y[:, 1]).all() and torch.isfinite(y[:, [0, 2]]).all()
    assert torch.isnan(mean[1]) and torch.isnan(var[1]) and torch.isfinite(var[[0, 2]]).all()
    constant = torch.full((5, 2), 3.0)
    y, mean, var, _, invstd = native.batch_norm_rows_forward(constant, None, None, 1e-5)
    assert (var == 0).all() and (y == 0).all() and (mean == 3).all()
    dx, dw, db = native.batch_norm_rows_backward(
        torch.ones(5, 2), constant, mean, invstd, None, (False, True, True)
    )
    assert dx is None and dw is None and db.tolist() == [5.0, 5.0]


def test_torch_func_wrapped_tensors_are_left_to_aten():
    """grad/vmap wrap tensors that have no data pointer of their own: not for the C kernels."""
    from torch.func import grad, vmap

    seen = []

    def probe(x):
        seen.append(native.supports(x))
        return x.sum()

    grad(probe)(torch.randn(5))
    vmap(probe)(torch.randn(2, 5))
    probe(torch.randn(5))
    assert seen == [False, False, True]
