import math

import pytest
import torch

from vitalstats.init import measure


def _oracle(tensor, kind):
    t = tensor.double().reshape(-1)
    saturated = zero = math.nan
    if kind == "saturating":
        saturated = (t.abs() > 0.97).double().mean().item()
    if kind == "sigmoid":
        saturated = ((t > 0.97) | (t < 0.03)).double().mean().item()
    if kind == "relu":
        zero = (t <= 0).double().mean().item()
    return [t.mean().item(), t.std(correction=0).item(), saturated, zero]


def _check(tensors, kinds, stack=None):
    results = measure.batched_statistics(tensors, kinds, stack=stack)
    for tensor, kind, got in zip(tensors, kinds, results):
        expected = _oracle(tensor, kind)
        for g, e in zip(got.tolist(), expected):
            if math.isnan(e):
                assert math.isnan(g)
            else:
                assert g == pytest.approx(e, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("stack", [True, False])
def test_mixed_shapes_and_kinds_match_float64(stack):
    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(16, 8, generator=g),
        torch.randn(16, 8, generator=g).tanh() * 1.02,
        torch.randn(4, 3, 5, generator=g).sigmoid(),
        torch.randn(16, 8, generator=g).relu(),
        torch.randn(7, generator=g) + 100.0,
        torch.randn((), generator=g),
    ]
    _check(tensors, ["plain", "saturating", "sigmoid", "relu", "plain", "plain"], stack)


def test_chunking_gives_the_same_numbers(monkeypatch):
    g = torch.Generator().manual_seed(1)
    tensors = [torch.randn(10, 10, generator=g) * (i + 1) for i in range(7)]
    kinds = ["relu", "plain", "saturating"] * 2 + ["sigmoid"]
    one_by_one = measure.batched_statistics(tensors, kinds, stack=False)
    whole = measure.batched_statistics(tensors, kinds, stack=True)
    monkeypatch.setattr(measure, "MAX_CHUNK_ELEMENTS", 250)  # 2 tensors per chunk
    chunked = measure.batched_statistics(tensors, kinds, stack=True)
    for a, b, c in zip(whole, chunked, one_by_one):
        torch.testing.assert_close(a, b, equal_nan=True)
        torch.testing.assert_close(a, c, equal_nan=True)
    _check(tensors, kinds, stack=True)


def test_half_precision_is_widened():
    tensor = (torch.randn(64, 64, generator=torch.Generator().manual_seed(2)) * 300).half()
    (got,) = measure.batched_statistics([measure.widened(tensor)], ["plain"])
    assert got.dtype == torch.float32
    assert got[1].item() == pytest.approx(tensor.double().std(correction=0).item(), rel=1e-5)


def test_a_large_mean_does_not_cancel_the_std():
    tensor = 1e4 + torch.randn(
        1000, generator=torch.Generator().manual_seed(3), dtype=torch.float32
    )
    (got,) = measure.batched_statistics([tensor], ["plain"])
    assert got[1].item() == pytest.approx(tensor.double().std(correction=0).item(), rel=1e-4)
