"""grad_stats against the seeds' per-parameter loop and float64 norms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vitalstats as vs


def seeds_log_gradient_stats(model: torch.nn.Module) -> dict[str, float]:
    """Seed 000's loop: one ``.norm().item()`` per parameter, then numpy."""
    norms = [p.grad.norm().item() for _, p in model.named_parameters() if p.grad is not None]
    return {
        "grad_norm_mean": float(np.mean(norms)),
        "grad_norm_std": float(np.std(norms)),
        "grad_norm_max": float(np.max(norms)),
    }


def model_with_gradients(seed: int = 0, scales=(1.0, 10.0, 0.01)) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3), torch.nn.Linear(3, 1)
    )
    model(torch.randn(7, 5)).square().mean().backward()
    for layer, scale in zip((model[0], model[2], model[3]), scales):
        layer.weight.grad.mul_(scale)
    return model


def test_matches_the_seeds_log_gradient_stats():
    model = model_with_gradients()
    stats = vs.optim.grad_stats(model)
    expected = seeds_log_gradient_stats(model)
    for key in ("grad_norm_mean", "grad_norm_std", "grad_norm_max"):
        assert stats.as_dict()[key] == pytest.approx(expected[key], rel=1e-6)
    assert stats.max_name == "2.weight"
    assert stats.nonfinite_count == 0 and stats.nonfinite_names == ()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), exponents=st.lists(st.integers(-6, 6), min_size=1, max_size=6))
def test_norms_and_moments_match_float64(seed, exponents):
    generator = torch.Generator().manual_seed(seed)
    named = []
    for index, exponent in enumerate(exponents):
        param = torch.nn.Parameter(torch.zeros(index + 2, 3))
        param.grad = torch.randn(index + 2, 3, generator=generator) * 10.0**exponent
        named.append((f"p{index}", param))
    stats = vs.optim.grad_stats(named)
    norms = np.array([p.grad.double().norm().item() for _, p in named])
    np.testing.assert_allclose(stats.norms, norms, rtol=1e-6)
    assert stats.mean == pytest.approx(norms.mean(), rel=1e-6)
    assert stats.std == pytest.approx(norms.std(), rel=1e-5, abs=1e-6 * norms.max())
    assert stats.max == pytest.approx(norms.max(), rel=1e-6)
    assert stats.max_name == f"p{int(np.argmax(norms))}"
    assert stats.total_norm == pytest.approx(np.sqrt(np.sum(norms**2)), rel=1e-6)


def test_nonfinite_gradients_are_counted_named_and_kept_out_of_the_moments():
    model = model_with_gradients()
    model[0].bias.grad[0] = float("nan")
    model[3].weight.grad[0, 0] = float("inf")
    stats = vs.optim.grad_stats(model.named_parameters())
    assert stats.nonfinite_count == 2
    assert stats.nonfinite_names == ("0.bias", "3.weight")
    finite = [
        p.grad.double().norm().item()
        for n, p in model.named_parameters()
        if n not in stats.nonfinite_names
    ]
    assert stats.mean == pytest.approx(np.mean(finite), rel=1e-6)
    assert stats.std == pytest.approx(np.std(finite), rel=1e-5)
    assert stats.max == pytest.approx(max(finite), rel=1e-6) and stats.max_name == "2.weight"
    assert math.isnan(stats.total_norm)


def test_parameters_without_gradients_are_skipped_and_plain_tensors_named_by_position():
    with_grad, without = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    with_grad.grad = torch.tensor([3.0, 4.0])
    stats = vs.optim.grad_stats([without, with_grad])
    assert stats.names == ("parameter[1]",)
    assert stats.norms == (5.0,) and stats.max_name == "parameter[1]" and stats.std == 0.0


def test_no_gradient_at_all_gives_nan_statistics():
    stats = vs.optim.grad_stats(torch.nn.Linear(2, 2))
    assert stats.names == () and stats.nonfinite_count == 0 and stats.max_name == ""
    assert math.isnan(stats.mean) and math.isnan(stats.std) and math.isnan(stats.max)


def test_mixed_dtypes_keep_parameter_order():
    model = model_with_gradients()
    model[2].double()
    model[2].weight.grad = torch.full((3, 6), 2.0, dtype=torch.float64)
    stats = vs.optim.grad_stats(model)
    expected = [p.grad.double().norm().item() for p in model.parameters()]
    np.testing.assert_allclose(stats.norms, expected, rtol=1e-6)
    assert stats.names == tuple(name for name, _ in model.named_parameters())


def test_stats_record_is_frozen():
    stats = vs.optim.grad_stats(model_with_gradients())
    with pytest.raises(AttributeError):
        stats.mean = 0.0  # type: ignore[misc]


def test_one_fused_norm_call_and_one_host_transfer(monkeypatch):
    """The issue's cost claim: one ``_foreach_norm`` per (device, dtype) group, one ``.cpu()``."""
    model = model_with_gradients()
    calls = {"foreach_norm": 0, "cpu": 0}
    foreach_norm, to_cpu = torch._foreach_norm, torch.Tensor.cpu

    def counting_foreach_norm(*args, **kwargs):
        calls["foreach_norm"] += 1
        return foreach_norm(*args, **kwargs)

    def counting_cpu(self, *args, **kwargs):
        calls["cpu"] += 1
        return to_cpu(self, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("per-parameter host read inside grad_stats")

    monkeypatch.setattr(torch, "_foreach_norm", counting_foreach_norm)
    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    monkeypatch.setattr(torch.linalg, "vector_norm", forbidden)
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    stats = vs.optim.grad_stats(model)
    monkeypatch.undo()
    assert calls == {"foreach_norm": 1, "cpu": 1}
    assert stats.max == pytest.approx(seeds_log_gradient_stats(model)["grad_norm_max"], rel=1e-6)


def test_a_non_iterable_argument_is_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"grad_stats: expected an nn.Module.*got a int"):
        vs.optim.grad_stats(42)
