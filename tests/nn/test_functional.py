"""vs.nn.functional against torch.nn.functional (float64, to rounding) and autograd's own
numerical derivatives (gradcheck, gradgradcheck)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

from vitalstats.nn import functional as F

DOUBLE = torch.float64


def _randn(*shape: int, seed: int = 0, scale: float = 2.0, offset: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=DOUBLE) * scale + offset).requires_grad_(True)


def _params(c: int | tuple[int, ...], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (c,) if isinstance(c, int) else c
    g = torch.Generator().manual_seed(seed)
    weight = (torch.rand(shape, generator=g, dtype=DOUBLE) + 0.5).requires_grad_(True)
    bias = torch.randn(shape, generator=g, dtype=DOUBLE).requires_grad_(True)
    return weight, bias


def _tile(t: torch.Tensor | None, times: int, shape: tuple[int, ...]) -> torch.Tensor | None:
    return None if t is None else t.repeat(times).reshape(shape)


def _training_bn(x, w, b):
    return F.batch_norm(x, None, None, w, b, training=True)


def _eval_bn(x, w, b):
    return F.batch_norm(
        x, torch.full((3,), 0.3, dtype=DOUBLE), torch.full((3,), 2.0, dtype=DOUBLE), w, b
    )


CASES = {
    "batch_norm train 1d": (_training_bn, (5, 3)),
    "batch_norm train 2d": (_training_bn, (3, 3, 2, 3)),
    "batch_norm eval": (_eval_bn, (4, 3, 2)),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (3, 2), _tile(w, 2, (3, 2)), _tile(b, 2, (3, 2))), (2, 4, 3, 2)),
    "group_norm": (lambda x, w, b: F.group_norm(x, 3, _tile(w, 2, (6,)), _tile(b, 2, (6,))), (2, 6, 3)),
    "instance_norm": (lambda x, w, b: F.instance_norm(x, weight=w, bias=b), (2, 3, 4)),
    "rms_norm": (lambda x, w, b: F.rms_norm(x, (3,), w, eps=1e-6), (4, 2, 3)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_and_gradgradcheck_pass_in_float64(name: str, affine: bool) -> None:
    fn, shape = CASES[name]
    x = _randn(*shape)
    w, b = _params(3)
    if affine:
        inputs = (x, w, b)
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)
    else:
        no_affine = (
            (lambda x: fn(x, None, None))
            if "rms" not in name
            else (lambda x: F.rms_norm(x, (3,), None, 1e-6))
        )
        assert torch.autograd.gradcheck(no_affine, (x,))
        assert torch.autograd.gradgradcheck(no_affine, (x,))  # fmt: skip


def _assert_matches_torch(ours, theirs, inputs) -> None:
    """Same output and same gradients for every input, in float64."""
    out_ours, out_theirs = ours(*inputs), theirs(*inputs)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(out_theirs)
    grads_ours = torch.autograd.grad(out_ours, inputs, grad)
    grads_theirs = torch.autograd.grad(out_theirs, inputs, grad)
    for g_ours, g_theirs in zip(grads_ours, grads_theirs, strict=True):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-10)


def test_batch_norm_training_matches_torch_and_updates_buffers_the_same() -> None:
    x = _randn(6, 3, 4, 2)
    w, b = _params(3)
    rm_ours, rv_ours = torch.zeros(3, dtype=DOUBLE), torch.ones(3, dtype=DOUBLE)
    rm_torch, rv_torch = rm_ours.clone(), rv_ours.clone()
    _assert_matches_torch(
        lambda x, w, b: F.batch_norm(x, rm_ours, rv_ours, w, b, True, 0.3, 1e-3),
        lambda x, w, b: TF.batch_norm(x, rm_torch, rv_torch, w, b, True, 0.3, 1e-3),
        (x, w, b),
    )
    torch.testing.assert_close(rm_ours, rm_torch, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv_ours, rv_torch, rtol=1e-12, atol=1e-12)


def test_batch_norm_eval_uses_the_running_statistics() -> None:
    x = _randn(4, 3, 5)
    w, b = _params(3)
    rm, rv = (
        torch.tensor([0.1, -2.0, 3.0], dtype=DOUBLE),
        torch.tensor([0.5, 2.0, 9.0], dtype=DOUBLE),
    )
    _assert_matches_torch(
        lambda x, w, b: F.batch_norm(x, rm, rv, w, b, False, eps=1e-4),
        lambda x, w, b: TF.batch_norm(x, rm, rv, w, b, False, eps=1e-4),
        (x, w, b),
    )


def test_update_running_stats_follows_the_float64_formula_with_bessel_correction() -> None:
    x = torch.randn(7, 4, dtype=DOUBLE) * 3 + 1
    running_mean, running_var = (
        torch.full((4,), 0.5, dtype=DOUBLE),
        torch.full((4,), 2.0, dtype=DOUBLE),
    )
    expected_mean = 0.75 * 0.5 + 0.25 * x.mean(0)
    expected_var = 0.75 * 2.0 + 0.25 * x.var(0, unbiased=True)
    F.update_running_stats(running_mean, running_var, x.mean(0), x.var(0, unbiased=False), 7, 0.25)
    torch.testing.assert_close(running_mean, expected_mean, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(running_var, expected_var, rtol=1e-14, atol=1e-14)


def test_update_running_stats_can_skip_a_nonfinite_batch() -> None:
    running_mean, running_var = torch.zeros(2), torch.ones(2)
    finite = F.update_running_stats(
        running_mean, running_var, torch.tensor([0.0, float("nan")]), torch.ones(2), 4, 0.1,
        skip_nonfinite=True,
    )  # fmt: skip
    assert not bool(finite)
    assert torch.equal(running_mean, torch.zeros(2)) and torch.equal(running_var, torch.ones(2))


@pytest.mark.parametrize("normalized_shape", [(5,), (3, 5)])
def test_layer_norm_matches_torch(normalized_shape: tuple[int, ...]) -> None:
    x = _randn(2, 4, 3, 5)
    w, b = _params(normalized_shape)
    _assert_matches_torch(
        lambda x, w, b: F.layer_norm(x, normalized_shape, w, b, 1e-3),
        lambda x, w, b: TF.layer_norm(x, normalized_shape, w, b, 1e-3),
        (x, w, b),
    )


@pytest.mark.parametrize(("groups", "shape"), [(1, (3, 4, 5)), (2, (2, 4, 3, 3)), (4, (2, 4, 6))])
def test_group_norm_matches_torch(groups: int, shape: tuple[int, ...]) -> None:
    x = _randn(*shape)
    w, b = _params(shape[1])
    _assert_matches_torch(
        lambda x, w, b: F.group_norm(x, groups, w, b, 1e-4),
        lambda x, w, b: TF.group_norm(x, groups, w, b, 1e-4),
        (x, w, b),
    )


@pytest.mark.parametrize("eps", [None, 1e-3])
def test_rms_norm_matches_torch(eps: float | None) -> None:
    x = _randn(3, 4, 6)
    w, _ = _params((4, 6))
    _assert_matches_torch(
        lambda x, w: F.rms_norm(x, (4, 6), w, eps),
        lambda x, w: TF.rms_norm(x, (4, 6), w, eps),
        (x, w),
    )


def test_instance_norm_matches_torch_including_running_buffers() -> None:
    x = _randn(3, 2, 5)
    w, b = _params(2)
    rm_ours, rv_ours = torch.zeros(2, dtype=DOUBLE), torch.ones(2, dtype=DOUBLE)
    rm_torch, rv_torch = rm_ours.clone(), rv_ours.clone()
    _assert_matches_torch(
        lambda x, w, b: F.instance_norm(x, rm_ours, rv_ours, w, b, True, 0.2),
        lambda x, w, b: TF.instance_norm(x, rm_torch, rv_torch, w, b, True, 0.2),
        (x, w, b),
    )
    torch.testing.assert_close(rm_ours, rm_torch, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv_ours, rv_torch, rtol=1e-12, atol=1e-12)


def test_backward_saves_no_more_than_torchs_native_batch_norm() -> None:
    """No composite graph: autograd keeps the input, the weight, mean and invstd; torch's
    native BatchNorm keeps those and the two running buffers."""

    def saved_numels(fn) -> list[int]:
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fn()
        return sorted(t.numel() for t in saved)

    x = torch.randn(8, 16, 4, 4, requires_grad=True)
    weight, bias = torch.ones(16, requires_grad=True), torch.zeros(16, requires_grad=True)
    ours = saved_numels(lambda: F.batch_norm(x, None, None, weight, bias, training=True))
    rm, rv = torch.zeros(16), torch.ones(16)
    theirs = saved_numels(lambda: TF.batch_norm(x, rm, rv, weight, bias, training=True))
    assert ours == [16, 16, 16, x.numel()]
    assert sum(ours) <= sum(theirs)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: F.batch_norm(torch.randn(1, 4), None, None, training=True), r"more than 1 value per channel.*\(1, 4\).*model.eval\(\)"),
        (lambda: F.batch_norm(torch.ones(4, 3, dtype=torch.long), None, None, training=True), "floating point.*torch.int64"),
        (lambda: F.batch_norm(torch.randn(4, 3), torch.zeros(5), torch.ones(5)), r"running_mean must have shape \(3,\).*\(5,\)"),
        (lambda: F.group_norm(torch.randn(2, 6, 3), 4), r"num_channels \(6\) must be divisible by num_groups \(4\).*\(2, 6, 3\)"),
        (lambda: F.layer_norm(torch.randn(2, 6), (5,)), r"trailing dims \(5,\).*\(2, 6\)"),
        (lambda: F.batch_norm(torch.randn(4, 3), None, None), "running_mean and running_var are required"),
    ],
)  # fmt: skip
def test_bad_input_is_a_value_error_with_expected_and_got(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_functional_batch_norm_updates_buffers_as_torch_bit_for_bit() -> None:
    """Training with (N, C) input: torch's kernel updates copies, so both buffers stay equal."""
    generator = torch.Generator().manual_seed(3)
    ours = (torch.randn(32, generator=generator), torch.rand(32, generator=generator) + 0.5)
    theirs = tuple(t.clone() for t in ours)  # (running_mean, running_var)
    for _ in range(10):
        x = torch.randn(50, 32, generator=generator) * 4 - 1
        assert torch.equal(
            F.batch_norm(x, *ours, training=True), TF.batch_norm(x, *theirs, training=True)
        )
    for mine, torchs in zip(ours, theirs, strict=True):
        assert torch.equal(mine, torchs)
