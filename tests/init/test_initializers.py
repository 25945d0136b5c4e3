"""Each initialiser against torch.nn.init: same generator in, the same bits out."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vitalstats as vs

SHAPES = [(64, 32), (8, 4, 3, 3), (6, 3, 5), (3, 70), (4, 2, 3, 3, 3)]


def _pair(shape, seed, dtype=torch.float32):
    return (
        torch.empty(shape, dtype=dtype),
        torch.Generator().manual_seed(seed),
        torch.empty(shape, dtype=dtype),
        torch.Generator().manual_seed(seed),
    )


def _assert_bit_exact(ours, theirs):
    assert ours.dtype == theirs.dtype
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gain", [1.0, 5 / 3])
def test_xavier_uniform_is_bit_exact(shape, gain):
    a, ga, b, gb = _pair(shape, 1)
    _assert_bit_exact(
        vs.init.xavier_uniform_(a, gain, generator=ga),
        torch.nn.init.xavier_uniform_(b, gain, generator=gb),
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gain", [1.0, 2**0.5])
def test_xavier_normal_is_bit_exact(shape, gain):
    a, ga, b, gb = _pair(shape, 2)
    _assert_bit_exact(
        vs.init.xavier_normal_(a, gain, generator=ga),
        torch.nn.init.xavier_normal_(b, gain, generator=gb),
    )


KAIMING_CASES = [
    dict(),
    dict(nonlinearity="relu"),
    dict(a=5**0.5),  # nn.Linear's default
    dict(a=0.2, mode="fan_out"),
    dict(nonlinearity="tanh", mode="fan_out"),
    dict(nonlinearity="selu"),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kwargs", KAIMING_CASES)
def test_kaiming_uniform_is_bit_exact(shape, kwargs):
    a, ga, b, gb = _pair(shape, 3)
    _assert_bit_exact(
        vs.init.kaiming_uniform_(a, generator=ga, **kwargs),
        torch.nn.init.kaiming_uniform_(b, generator=gb, **kwargs),
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kwargs", KAIMING_CASES)
def test_kaiming_normal_is_bit_exact(shape, kwargs):
    a, ga, b, gb = _pair(shape, 4)
    _assert_bit_exact(
        vs.init.kaiming_normal_(a, generator=ga, **kwargs),
        torch.nn.init.kaiming_normal_(b, generator=gb, **kwargs),
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gain", [1, 3.0])
def test_orthogonal_is_bit_exact(shape, gain):
    a, ga, b, gb = _pair(shape, 5)
    _assert_bit_exact(
        vs.init.orthogonal_(a, gain, generator=ga), torch.nn.init.orthogonal_(b, gain, generator=gb)
    )


@pytest.mark.parametrize("shape", [(20, 50), (50, 20), (16, 4, 3, 3)])
def test_orthogonal_rows_or_columns_are_orthonormal_times_gain(shape):
    w = vs.init.orthogonal_(
        torch.empty(shape, dtype=torch.float64),
        gain=2.0,
        generator=torch.Generator().manual_seed(0),
    ).flatten(1)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    torch.testing.assert_close(gram, 4.0 * torch.eye(gram.shape[0], dtype=torch.float64))


TRUNC_CASES = [
    dict(),  # [-2, 2] holds 95% of the mass: redraw branch
    dict(mean=0.5, std=0.1, a=0.3, b=0.9),
    dict(std=0.02, a=-0.04, b=0.04),
    dict(a=2.0, b=3.0),  # 2% of the mass: uniform-proposal branch
    dict(mean=0.0, std=1.0, a=-0.1, b=0.1),
    dict(mean=1.0, std=0.5, a=2.5, b=4.0),
]


@pytest.mark.parametrize("shape", [(64, 32), (8, 4, 3, 3)])
@pytest.mark.parametrize("kwargs", TRUNC_CASES)
def test_trunc_normal_is_bit_exact_and_inside_the_bounds(shape, kwargs):
    a, ga, b, gb = _pair(shape, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the last case warns in both, by design
        ours = vs.init.trunc_normal_(a, generator=ga, **kwargs)
        theirs = torch.nn.init.trunc_normal_(b, generator=gb, **kwargs)
    _assert_bit_exact(ours, theirs)
    assert ours.min() >= kwargs.get("a", -2.0) and ours.max() <= kwargs.get("b", 2.0)


def test_trunc_normal_warns_when_the_mean_is_far_outside():
    with pytest.warns(UserWarning, match="more than 2 std"):
        vs.init.trunc_normal_(torch.empty(10), mean=0.0, std=0.1, a=1.0, b=2.0)


def test_trunc_normal_has_the_truncated_normal_std():
    # Var of N(0,1) truncated to [-2, 2]: 1 - 2 * 2 * phi(2) / (Phi(2) - Phi(-2)) = 0.7737
    from scipy.stats import truncnorm

    w = vs.init.trunc_normal_(
        torch.empty(200_000, dtype=torch.float64), generator=torch.Generator().manual_seed(0)
    )
    assert w.std().item() == pytest.approx(truncnorm.std(-2, 2), rel=0.01)


def test_same_as_torch_with_the_global_generator():
    torch.manual_seed(11)
    ours = vs.init.kaiming_uniform_(torch.empty(30, 20), nonlinearity="relu")
    torch.manual_seed(11)
    theirs = torch.nn.init.kaiming_uniform_(torch.empty(30, 20), nonlinearity="relu")
    _assert_bit_exact(ours, theirs)


def test_float64_and_bfloat16_are_bit_exact_too():
    for dtype in (torch.float64, torch.bfloat16):
        a, ga, b, gb = _pair((40, 30), 7, dtype)
        _assert_bit_exact(
            vs.init.xavier_uniform_(a, generator=ga), torch.nn.init.xavier_uniform_(b, generator=gb)
        )


@settings(max_examples=25, deadline=None)
@given(
    out_features=st.integers(1, 40),
    in_features=st.integers(1, 40),
    kernel=st.integers(0, 3),
    seed=st.integers(0, 2**31 - 1),
    slope=st.floats(0, 1),
    fan_out=st.booleans(),
)
def test_kaiming_and_xavier_bit_exact_for_any_shape(
    out_features, in_features, kernel, seed, slope, fan_out
):
    shape = (out_features, in_features, *([kernel] if kernel else []))
    mode = "fan_out" if fan_out else "fan_in"
    a, ga, b, gb = _pair(shape, seed)
    _assert_bit_exact(
        vs.init.kaiming_normal_(a, a=slope, mode=mode, generator=ga),
        torch.nn.init.kaiming_normal_(b, a=slope, mode=mode, generator=gb),
    )
    _assert_bit_exact(
        vs.init.xavier_uniform_(a, generator=ga), torch.nn.init.xavier_uniform_(b, generator=gb)
    )


def test_initialisers_write_in_place_without_recording_autograd():
    weight = torch.nn.Parameter(torch.empty(10, 5))
    returned = vs.init.kaiming_normal_(weight, generator=torch.Generator().manual_seed(0))
    assert returned is weight and weight.grad_fn is None and weight.requires_grad


def test_kaiming_on_a_zero_element_tensor_warns_and_does_nothing():
    with pytest.warns(UserWarning, match="kaiming_normal_: initializing zero-element"):
        assert vs.init.kaiming_normal_(torch.empty(0, 5)).shape == (0, 5)


@pytest.mark.parametrize(
    "initialiser",
    [
        vs.init.xavier_uniform_,
        vs.init.xavier_normal_,
        vs.init.kaiming_uniform_,
        vs.init.kaiming_normal_,
    ],
)
def test_a_bias_shaped_tensor_is_a_clear_error(initialiser):
    with pytest.raises(ValueError, match=rf"{initialiser.__name__}: .*got shape \(10,\)"):
        initialiser(torch.empty(10))


def test_orthogonal_of_a_vector_is_a_clear_error():
    with pytest.raises(ValueError, match=r"orthogonal_: .*got shape \(10,\)"):
        vs.init.orthogonal_(torch.empty(10))


def test_bad_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="kaiming_uniform_: mode must be"):
        vs.init.kaiming_uniform_(torch.empty(3, 3), mode="avg")
