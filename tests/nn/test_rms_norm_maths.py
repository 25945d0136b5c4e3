"""vitalstats.nn._rms_norm: the fused forward and the one-buffer backward against the
reference definition and ``rms_norm_backward``, in float64; double backward."""

from __future__ import annotations

import pytest
import torch

from tests.nn._compare import assert_close
from vitalstats.nn._rms_norm import RMSNormFunction, rms_norm_backward, rms_norm_reference

DOUBLE = torch.float64


def _rows(rows: int = 6, width: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, width, generator=g, dtype=DOUBLE) + 0.5).requires_grad_(True)


@pytest.mark.parametrize("affine", [True, False])
def test_forward_and_backward_match_the_definition_and_the_formula(affine: bool) -> None:
    x = _rows()
    w = (torch.rand(8, dtype=DOUBLE) + 0.5).requires_grad_(True) if affine else None
    y = RMSNormFunction.apply(x, w, 1e-6)
    y_ref = rms_norm_reference(x, (-1,), w, 1e-6)
    assert_close(y, y_ref, DOUBLE, "y")
    grad = torch.randn_like(y)
    inputs = (x, w) if affine else (x,)
    grads = torch.autograd.grad(y, inputs, grad)
    grads_ref = torch.autograd.grad(y_ref, inputs, grad)
    for ours, ref, what in zip(grads, grads_ref, ("dx", "dw"), strict=False):
        assert_close(ours, ref, DOUBLE, what)
    invrms = torch.rsqrt(x.detach().square().mean(-1, keepdim=True) + 1e-6)
    formula = rms_norm_backward(grad, x.detach(), None if w is None else w.detach(), invrms, (-1,))
    assert_close(grads[0], formula, DOUBLE, "dx against rms_norm_backward")


def test_double_backward_passes_gradgradcheck() -> None:
    x, w = _rows(3, 5), (torch.rand(5, dtype=DOUBLE) + 0.5).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda x, w: RMSNormFunction.apply(x, w, 1e-6), (x, w))


def test_bfloat16_input_keeps_its_dtype_with_float32_statistics() -> None:
    x = _rows().detach().bfloat16().requires_grad_(True)
    y = RMSNormFunction.apply(x, None, 1e-6)
    assert y.dtype == torch.bfloat16
    reference = rms_norm_reference(x.detach().double(), (-1,), None, 1e-6)
    assert_close(y, reference, torch.bfloat16, "y")
    y.backward(torch.ones_like(y))
    assert x.grad.dtype == torch.bfloat16
