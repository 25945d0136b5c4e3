"""vitalstats.nn._batch_norm: every kernel path against the reference formulas, in float64.

The fast path picks kernels by layout and dtype (channels innermost, channels first, native);
each must give the definition's output and statistics (``batch_norm_reference``), autograd's
gradient of that definition, and second derivatives (gradgradcheck)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.nn._compare import assert_close
from vitalstats.nn._batch_norm import (
    batch_norm_backward,
    batch_norm_reference,
    batch_norm_training,
    batch_statistics,
    kernel_update,
    restore_running_stats,
    variance_from_invstd,
)
from vitalstats.stats import native

DOUBLE = torch.float64


def _layout(name: str, dtype: torch.dtype = DOUBLE) -> torch.Tensor:
    """An input in one of the layouts the kernels tell apart, far from zero (|mean| >> std)."""
    g = torch.Generator().manual_seed(len(name))
    base = {"2d": (9, 4), "3d": (5, 4, 3), "nchw": (3, 4, 5, 6), "5d": (2, 4, 3, 2, 3)}
    if name in base:
        x = torch.randn(base[name], generator=g, dtype=DOUBLE)
    elif name == "channels_last":
        x = torch.randn(3, 4, 5, 6, generator=g, dtype=DOUBLE).to(memory_format=torch.channels_last)
    elif name == "transposed":  # neither contiguous nor channels_last: the native kernel
        x = torch.randn(6, 4, 3, generator=g, dtype=DOUBLE).transpose(0, 2)
    else:
        raise ValueError(name)
    return (x * 1.5 + 40.0).to(dtype).requires_grad_(True)


LAYOUTS = ["2d", "3d", "nchw", "5d", "channels_last", "transposed"]


def _params(c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    weight = (torch.rand(c, generator=g, dtype=DOUBLE) + 0.5).requires_grad_(True)
    return weight, torch.randn(c, generator=g, dtype=DOUBLE).requires_grad_(True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_path_gives_the_definitions_output_statistics_and_gradients(layout: str) -> None:
    x, (w, b) = _layout(layout), _params()
    y, mean, var, unbiased = batch_norm_training(x, w, b, 1e-3)
    y_ref, mean_ref, var_ref = batch_norm_reference(x, w, b, 1e-3)
    n = x.numel() // x.shape[1]
    for ours, ref, what in (
        (y, y_ref, "y"), (mean, mean_ref, "mean"), (var, var_ref, "var"),
        (unbiased, var_ref * n / (n - 1), "unbiased var"),
    ):  # fmt: skip
        assert_close(ours, ref, DOUBLE, f"{layout} {what}")
    grad = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b), grad)
    grads_ref = torch.autograd.grad(y_ref, (x, w, b), grad)
    for ours, ref, what in zip(grads, grads_ref, ("dx", "dw", "db"), strict=True):
        assert_close(ours, ref, DOUBLE, f"{layout} {what}")
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


@pytest.mark.parametrize("layout", ["2d", "nchw", "channels_last"])
def test_float32_paths_stay_within_float32_rounding_of_the_float64_answer(layout: str) -> None:
    x64 = _layout(layout)
    x = x64.detach().float().requires_grad_(True)
    w, b = (p.detach().float().requires_grad_(True) for p in _params())
    y, mean, var, _ = batch_norm_training(x, w, b, 1e-5)
    y_ref, mean_ref, var_ref = batch_norm_reference(
        x.detach().double(), w.double(), b.double(), 1e-5
    )
    assert_close(y, y_ref, torch.float32, f"{layout} y")
    torch.testing.assert_close(var.double(), var_ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(mean.double(), mean_ref, rtol=2.5e-7, atol=0)  # 2 ulps


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_with_float32_parameters_gets_float32_statistics(
    dtype: torch.dtype,
) -> None:
    """Mixed precision (a float32 layer, half input): torch's mixed kernel, float32 statistics;
    a layer converted to half keeps torch's half-precision statistics."""
    x = _layout("nchw", dtype)
    w32 = torch.ones(4)
    y, mean, var, _ = batch_norm_training(x, w32, None, 1e-5)
    assert y.dtype == dtype and mean.dtype == var.dtype == torch.float32
    _, mean_ref, var_ref = batch_norm_reference(x.detach().double(), None, None, 1e-5)
    torch.testing.assert_close(var.double(), var_ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(mean.double(), mean_ref, rtol=1e-6, atol=0)
    y_half, mean_half, _, _ = batch_norm_training(x, w32.to(dtype), None, 1e-5)
    y_torch, mean_torch, _ = torch.native_batch_norm(
        x.detach(), w32.to(dtype), None, None, None, True, 0.1, 1e-5
    )
    assert mean_half.dtype == dtype and torch.equal(y_half, y_torch)
    assert torch.equal(mean_half, mean_torch)


def test_the_backward_formula_is_autograds_derivative_of_the_definition() -> None:
    x, (w, b) = _layout("nchw"), _params()
    y_ref, _, _ = batch_norm_reference(x, w, b, 1e-3)
    grad = torch.randn_like(y_ref)
    expected = torch.autograd.grad(y_ref, x, grad)[0]
    with torch.no_grad():
        mean, var = batch_statistics(x)
        invstd = torch.rsqrt(var + 1e-3)
        dims = (0, 2, 3)
        x_hat = (x - mean.view(1, -1, 1, 1)) * invstd.view(1, -1, 1, 1)
        sum_dy, sum_dy_xhat = grad.sum(dims), (grad * x_hat).sum(dims)
        dx = batch_norm_backward(grad, x, w, mean, invstd, sum_dy, sum_dy_xhat, x.numel() // 4)
    assert_close(dx, expected, DOUBLE, "dx")


@pytest.mark.parametrize("layout", ["2d", "nchw", "channels_last", "transposed"])
def test_double_backward_passes_gradgradcheck_on_every_path(layout: str) -> None:
    x = _layout(layout).detach()[:3].clone().requires_grad_(True)
    w, b = _params()
    assert torch.autograd.gradgradcheck(
        lambda x, w, b: batch_norm_training(x, w, b, 1e-3)[0], (x, w, b), fast_mode=True
    )


def test_statistics_are_those_of_the_definition_on_every_layout() -> None:
    for layout in LAYOUTS:
        x = _layout(layout).detach()
        mean, var = batch_statistics(x)
        _, mean_ref, var_ref = batch_norm_reference(x, None, None, 0.0)
        assert_close(mean, mean_ref, DOUBLE, f"{layout} mean")
        assert_close(var, var_ref, DOUBLE, f"{layout} var")


def _rows_layout(name: str) -> torch.Tensor:
    """float32 inputs laid out as rows of channels, far from zero (|mean| = 40 std)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn({"2d": (64, 6), "nc11": (16, 6, 1, 1), "channels_last": (4, 6, 5, 7),
                     "channels_last_3d": (2, 6, 3, 4, 5)}[name], generator=g)  # fmt: skip
    if name == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif name == "channels_last_3d":
        x = x.to(memory_format=torch.channels_last_3d)
    return (x * 1.5 + 60.0).requires_grad_(True)


ROWS = ["2d", "nc11", "channels_last", "channels_last_3d"]


@pytest.fixture()
def rows_kernels(monkeypatch):
    """The C kernels for these small inputs too (they take inputs of 2^21 values and up)."""
    from vitalstats.nn import _batch_norm
    from vitalstats.stats import native

    if native.library() is None:
        pytest.skip(f"the C kernels cannot be built here: {native.status()[1]}")
    monkeypatch.setattr(_batch_norm, "_ROWS_MIN_VALUES", 1)


@pytest.mark.parametrize("layout", ROWS)
def test_float32_rows_run_the_c_kernels_no_less_accurate_than_torch(layout, rows_kernels) -> None:
    """Channels-innermost float32 CPU input takes the C kernels (float64 sums): output,
    statistics and gradients at least as close to float64 as torch's kernel, same layout."""
    x = _rows_layout(layout)
    w, b = (p.detach().float().requires_grad_(True) for p in _params(6))
    y, mean, var, _ = batch_norm_training(x, w, b, 1e-5)
    assert type(y.grad_fn).__name__ == "BatchNormFunctionBackward"
    theirs = torch.nn.functional.batch_norm(x, None, None, w, b, training=True, eps=1e-5)
    assert y.stride() == theirs.stride()
    x64, w64, b64 = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    y64, mean64, var64 = batch_norm_reference(x64, w64, b64, 1e-5)
    grad = torch.randn_like(y)
    ours = (y, *torch.autograd.grad(y, (x, w, b), grad))
    torch_ = (theirs, *torch.autograd.grad(theirs, (x, w, b), grad))
    exact = (y64, *torch.autograd.grad(y64, (x64, w64, b64), grad.double()))
    for a, t, e, what in zip(ours, torch_, exact, ("y", "dx", "dw", "db"), strict=True):
        error, torch_error = ((v.double() - e).abs().max() for v in (a, t))
        assert error <= torch_error + 2 * torch.finfo(torch.float32).eps * e.abs().max(), what
        assert a.stride() == t.stride(), what
    torch.testing.assert_close(mean.double(), mean64, rtol=2e-7, atol=0)
    torch.testing.assert_close(var.double(), var64, rtol=3e-7, atol=0)


def test_float32_rows_double_backward_is_the_reference_formulas(rows_kernels) -> None:
    x = _rows_layout("2d")
    assert type(batch_norm_training(x, None, None, 1e-5)[0].grad_fn).__name__ == (
        "BatchNormFunctionBackward"
    )
    w, b = (p.detach().float().requires_grad_(True) for p in _params(6))
    v = torch.randn_like(x)
    results = []
    for forward in (batch_norm_training, batch_norm_reference):
        y = forward(x, w, b, 1e-5)[0]
        (dx,) = torch.autograd.grad(y, x, v, create_graph=True)
        results.append(torch.autograd.grad(dx.square().sum(), (x, w)))
    for ours, ref, what in zip(*results, ("d2x", "d2w"), strict=True):
        assert_close(ours, ref, torch.float32, what)


def test_large_float32_rows_on_one_thread_take_the_c_kernels_small_ones_torchs() -> None:
    from vitalstats.stats import native

    if native.library() is None:
        pytest.skip(f"the C kernels cannot be built here: {native.status()[1]}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        big = torch.randn(2048, 1024, requires_grad=True)  # 2^21 values
        small = torch.randn(2047, 1024, requires_grad=True)
        paths = [type(batch_norm_training(x, None, None, 1e-5)[0].grad_fn).__name__
                 for x in (big, small)]  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert paths == ["BatchNormFunctionBackward", "NativeBatchNormBackward0"]


def test_float32_rows_without_the_c_kernels_run_torchs_kernel(monkeypatch) -> None:
    from vitalstats.nn import _batch_norm
    from vitalstats.stats import native

    monkeypatch.setattr(native, "library", lambda: None)
    monkeypatch.setattr(_batch_norm, "_ROWS_MIN_VALUES", 1)
    x = _rows_layout("2d")
    y, _, var, _ = batch_norm_training(x, None, None, 1e-5)
    assert type(y.grad_fn).__name__ == "NativeBatchNormBackward0"
    y_ref, _, var_ref = batch_norm_reference(x.detach().double(), None, None, 1e-5)
    assert_close(y, y_ref, torch.float32, "y")
    assert_close(var, var_ref, torch.float32, "var")


def _invstd_with_edges() -> torch.Tensor:
    """float32 invstd values: random over many decades, and the edges of the formula."""
    g = torch.Generator().manual_seed(3)
    spread = torch.exp(torch.randn(4093, generator=g) * 6)
    edges = torch.tensor([0.0, 1.0, 1 / math.sqrt(1e-5), 1e30, 1e-30, math.inf, math.nan])
    return torch.cat([spread, edges])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.1])
def test_variance_from_invstd_in_c_is_the_aten_formula_bit_for_bit(eps, dtype, monkeypatch):
    """invstd^-2 - eps clamped at 0 (NaN kept): the C call rounds as the ATen ops do in the
    invstd's dtype (bfloat16: after each op), and both say the same about finiteness and the
    count."""
    invstd = _invstd_with_edges().to(dtype)
    results = []
    for library in (native.library, lambda: None):  # the C call, then the ATen fallback
        monkeypatch.setattr(native, "library", library)
        count = torch.tensor(5)
        var, finite = variance_from_invstd(invstd, eps, True, count)
        finite_var, counted = variance_from_invstd(invstd[:4093], eps, True, count)
        results.append((var, finite, finite_var, counted, int(count)))
    (c_var, c_finite, c_part, c_counted, c_count), aten = results
    torch.testing.assert_close(c_var, aten[0], rtol=0, atol=0, equal_nan=True)
    assert torch.equal(c_part, aten[2])
    assert (c_finite, c_counted, c_count) == (aten[1], aten[3], aten[4]) == (False, True, 6)
    # invstd 0 and 1e-30 (whose square underflows) give Inf, 1e30 and Inf give 0, NaN stays
    assert c_var[-7] == c_var[-3] == math.inf and c_var[-4] == c_var[-2] == 0
    assert c_var[-1].isnan() and c_var.dtype == torch.float32


def test_variance_from_invstd_counts_every_batch_when_finiteness_is_not_required() -> None:
    count = torch.tensor(0)
    var, finite = variance_from_invstd(torch.tensor([math.nan, 2.0]), 1e-5, False, count)
    assert finite and int(count) == 1 and var[0].isnan()
    assert variance_from_invstd(torch.tensor([2.0]), 1e-5, True, None)[1]


@pytest.mark.parametrize("with_c", [True, False], ids=["C copy", "ATen stack"])
def test_kernel_update_is_torchs_update_in_place_and_keeps_the_previous_buffers(
    with_c, monkeypatch
) -> None:
    if not with_c:
        monkeypatch.setattr(native, "library", lambda: None)
    x = torch.randn(12, 5) * 3 + 1
    running = [torch.rand(5), torch.rand(5) + 0.5]
    before = [t.clone() for t in running]
    expected = [t.clone() for t in running]
    from_torch = torch.native_batch_norm(x, None, None, *expected, True, 0.3, 1e-5)
    *ours, previous = kernel_update(x, None, None, 1e-5, *running, 0.3, True)
    assert all(map(torch.equal, ours, from_torch)) and previous.shape == (2, 5)
    assert torch.equal(running[0], expected[0]) and torch.equal(running[1], expected[1])
    assert torch.equal(previous[0], before[0]) and torch.equal(previous[1], before[1])
    restore_running_stats(*running, previous)
    assert torch.equal(running[0], before[0]) and torch.equal(running[1], before[1])
    assert kernel_update(x, None, None, 1e-5, *running, 0.3, False)[3] is None
