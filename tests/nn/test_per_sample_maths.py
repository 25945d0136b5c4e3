"""vitalstats.nn._per_sample: torch's LayerNorm/GroupNorm kernels (what runs) against the
reference definitions and the closed-form backward ``centered_backward``, in float64."""

from __future__ import annotations

import pytest
import torch

from tests.nn._compare import assert_close
from vitalstats.nn._per_sample import (
    centered_backward,
    group_norm_native,
    group_norm_reference,
    layer_norm_native,
    layer_norm_reference,
)

DOUBLE = torch.float64


def _data(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=DOUBLE) * 2 + 5).requires_grad_(True)


def test_layer_norm_kernel_matches_the_definition_and_the_formula() -> None:
    x, w, b = _data(3, 4, 2, 5), _data(2, 5, seed=1), _data(2, 5, seed=2)
    y = layer_norm_native(x, (2, 5), w, b, 1e-3)
    y_ref = layer_norm_reference(x, (2, 5), w, b, 1e-3)
    assert_close(y, y_ref, DOUBLE, "y")
    grad = torch.randn_like(y)
    dx, dw, db = torch.autograd.grad(y, (x, w, b), grad)
    dx_ref, dw_ref, db_ref = torch.autograd.grad(y_ref, (x, w, b), grad)
    assert_close(dx, dx_ref, DOUBLE, "dx against autograd of the definition")
    formula = centered_backward(grad, x.detach(), w.detach(), (2, 3), 1e-3)
    assert_close(dx, formula, DOUBLE, "dx against centered_backward")
    assert_close(dw, dw_ref, DOUBLE, "dw")
    assert_close(db, db_ref, DOUBLE, "db")


def test_group_norm_kernel_matches_the_definition_and_the_formula() -> None:
    n, c, groups = 3, 6, 2
    x, w, b = _data(n, c, 4, 3), _data(c, seed=1), _data(c, seed=2)
    y = group_norm_native(x, groups, w, b, 1e-3)
    y_ref = group_norm_reference(x, groups, w, b, 1e-3)
    assert_close(y, y_ref, DOUBLE, "y")
    grad = torch.randn_like(y)
    dx = torch.autograd.grad(y, x, grad)[0]
    grouped = (n, groups, c // groups, 12)
    formula = centered_backward(
        grad.reshape(grouped), x.detach().reshape(grouped),
        w.detach().reshape(1, groups, c // groups, 1), (2, 3), 1e-3,
    ).reshape(x.shape)  # fmt: skip
    assert_close(dx, formula, DOUBLE, "dx against centered_backward")
    assert_close(dx, torch.autograd.grad(y_ref, x, grad)[0], DOUBLE, "dx against the definition")


def test_group_norm_keeps_channels_last_like_torch() -> None:
    x = _data(2, 4, 3, 3).detach().to(memory_format=torch.channels_last)
    assert group_norm_native(x, 2, None, None, 1e-5).is_contiguous(
        memory_format=torch.channels_last
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_layer_norm_is_torchs_bit_for_bit_with_no_more_saved(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 6, 32, generator=g) * 3 + 5).to(dtype).requires_grad_(True)
    w = (torch.rand(32, generator=g) + 0.5).to(dtype).requires_grad_(True)
    b = torch.randn(32, generator=g).to(dtype).requires_grad_(True)
    grad = torch.randn(x.shape, generator=g).to(dtype)

    def run(fn):
        saved: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.untyped_storage().nbytes()) or t, lambda t: t
        ):
            y = fn(x, (32,), w, b, 1e-5)
        grads = torch.autograd.grad(y, (x, w, b), grad, create_graph=True)
        second = torch.autograd.grad(grads[0].float().square().sum(), x)[0]
        return y, grads, second, sum(saved)

    ours, theirs = run(layer_norm_native), run(torch.nn.functional.layer_norm)
    assert torch.equal(ours[0], theirs[0])
    for a, c in zip(ours[1], theirs[1], strict=True):
        assert torch.equal(a, c)
    assert_close(ours[2], theirs[2], dtype, "double backward")
    assert ours[3] <= theirs[3]
