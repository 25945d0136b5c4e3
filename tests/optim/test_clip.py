"""vs.optim.clip_grad_norm_ against torch.nn.utils.clip_grad_norm_ (bits) and float64 maths."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vitalstats as vs


def make_parameters(seed: int, shapes, dtypes=None, scale: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    dtypes = dtypes or [torch.float32] * len(shapes)
    params = []
    for shape, dtype in zip(shapes, dtypes):
        param = torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype))
        param.grad = (scale * torch.randn(shape, generator=generator)).to(dtype)
        params.append(param)
    return params


def clone_parameters(params):
    copies = []
    for param in params:
        copy = torch.nn.Parameter(param.detach().clone())
        copy.grad = None if param.grad is None else param.grad.clone()
        copies.append(copy)
    return copies


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    count=st.integers(1, 5),
    norm_type=st.sampled_from([2.0, 1.0, 3.0, 0.5, math.inf]),
    max_norm=st.sampled_from([0.0, 0.1, 1.0, 1e3]),
    foreach=st.sampled_from([None, True, False]),
    mixed_dtypes=st.booleans(),
)
def test_matches_torch_bit_for_bit(seed, count, norm_type, max_norm, foreach, mixed_dtypes):
    shapes = [(i + 1, 4) for i in range(count)]
    dtypes = [torch.float64 if mixed_dtypes and i % 2 else torch.float32 for i in range(count)]
    ours = make_parameters(seed, shapes, dtypes, scale=3.0)
    theirs = clone_parameters(ours)
    total_ours = vs.optim.clip_grad_norm_(ours, max_norm, norm_type, foreach=foreach)
    total_theirs = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type, foreach=foreach)
    assert total_ours.dtype == total_theirs.dtype and torch.equal(total_ours, total_theirs)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_total_norm_and_clipped_gradients_match_float64_maths(norm_type):
    params = make_parameters(0, [(3, 5), (7,), (2, 2, 2)], scale=4.0)
    flat = torch.cat([p.grad.double().flatten() for p in params])
    expected_total = torch.linalg.vector_norm(flat, norm_type)
    expected_factor = min(1.0, 0.5 / (expected_total.item() + 1e-6))
    expected_grads = [p.grad.double() * expected_factor for p in params]
    total = vs.optim.clip_grad_norm_(params, max_norm=0.5, norm_type=norm_type)
    torch.testing.assert_close(total.double(), expected_total, rtol=1e-6, atol=0)
    for param, expected in zip(params, expected_grads):
        torch.testing.assert_close(param.grad.double(), expected, rtol=1e-5, atol=1e-9)
    clipped_total = torch.linalg.vector_norm(
        torch.cat([p.grad.double().flatten() for p in params]), norm_type
    )
    assert clipped_total.item() <= 0.5 * (1 + 1e-5)


def test_small_gradients_are_left_alone():
    params = make_parameters(1, [(4,)], scale=1e-3)
    before = params[0].grad.clone()
    vs.optim.clip_grad_norm_(params, max_norm=1.0)
    assert torch.equal(params[0].grad, before)


def test_accepts_a_module_a_tensor_and_named_parameters():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    model(torch.randn(4, 3)).sum().backward()
    gradients = [p.grad.clone() for p in model.parameters()]
    expected = torch.nn.utils.clip_grad_norm_(clone_parameters(model.parameters()), 0.1)
    for parameters in (model, model.named_parameters(), list(model.parameters())):
        for param, grad in zip(model.parameters(), gradients):
            param.grad = grad.clone()
        assert torch.equal(vs.optim.clip_grad_norm_(parameters, 0.1), expected)
    single = make_parameters(2, [(5,)])[0]
    expected = torch.nn.utils.clip_grad_norm_(clone_parameters([single]), 0.1)
    assert torch.equal(vs.optim.clip_grad_norm_(single, 0.1), expected)


def test_no_gradients_returns_zero_and_an_empty_generator_warns_like_torch():
    param = torch.nn.Parameter(torch.ones(3))
    assert torch.equal(vs.optim.clip_grad_norm_([param], 1.0), torch.tensor(0.0))
    with pytest.warns(UserWarning, match="empty generator"):
        vs.optim.clip_grad_norm_((p for p in []), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vs.optim.clip_grad_norm_([], 1.0)  # a list is not a generator: no warning


def test_nonfinite_error_names_the_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    model[0].bias.grad[1] = float("nan")
    model[1].weight.grad[0, 2] = float("inf")
    with pytest.raises(vs.optim.NonFiniteGradientError) as error:
        vs.optim.clip_grad_norm_(model, 1.0, error_if_nonfinite=True)
    message = str(error.value)
    assert "0.bias (3,) (1 NaN, 0 Inf)" in message
    assert "1.weight (1, 3) (0 NaN, 1 Inf)" in message
    assert "0.weight" not in message and "error_if_nonfinite=False" in message
    assert isinstance(error.value, RuntimeError)  # what torch raises, so old handlers work


def test_nonfinite_without_error_scales_like_torch():
    ours = make_parameters(3, [(4,), (2,)])
    ours[1].grad[0] = float("inf")
    theirs = clone_parameters(ours)
    total = vs.optim.clip_grad_norm_(ours, 1.0)
    assert torch.equal(total, torch.nn.utils.clip_grad_norm_(theirs, 1.0))
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad.isnan(), b.grad.isnan())
        assert torch.equal(a.grad.nan_to_num(), b.grad.nan_to_num())


def test_overflow_of_finite_gradients_is_reported_as_such():
    params = make_parameters(4, [(4,)], dtypes=[torch.float16], scale=1.0)
    params[0].grad.fill_(60000.0)  # finite in float16, but the norm 120000 is not
    with pytest.raises(vs.optim.NonFiniteGradientError, match="every gradient is finite"):
        vs.optim.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)


def test_unnamed_parameters_are_named_by_position():
    params = make_parameters(5, [(2,), (2,)])
    params[1].grad[0] = float("nan")
    with pytest.raises(RuntimeError, match=r"parameter\[1\] \(2,\)"):
        vs.optim.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)


def test_negative_max_norm_is_refused():
    with pytest.raises(ValueError, match=r"max_norm must be >= 0, got -1\.0"):
        vs.optim.clip_grad_norm_(make_parameters(6, [(2,)]), -1.0)


def test_wrong_item_type_is_refused():
    with pytest.raises(TypeError, match=r"item 0 is a str"):
        vs.optim.clip_grad_norm_(["weight"], 1.0)
