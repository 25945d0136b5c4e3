import math

import pytest
import torch

import vitalstats as vs
from vitalstats.init.gains import fan_for_mode


@pytest.mark.parametrize("name", vs.init.KNOWN_NONLINEARITIES)
def test_calculate_gain_matches_torch_for_every_name(name):
    assert vs.init.calculate_gain(name) == torch.nn.init.calculate_gain(name)


@pytest.mark.parametrize("slope", [0, 0.01, 0.2, 1, 3.5])
def test_leaky_relu_gain_uses_the_slope_like_torch(slope):
    assert vs.init.calculate_gain("leaky_relu", slope) == torch.nn.init.calculate_gain(
        "leaky_relu", slope
    )
    assert vs.init.calculate_gain("leaky_relu", slope) == pytest.approx(
        math.sqrt(2 / (1 + slope**2))
    )


def test_the_documented_gains():
    assert vs.init.calculate_gain("tanh") == 5 / 3
    assert vs.init.calculate_gain("relu") == math.sqrt(2)
    assert vs.init.calculate_gain("selu") == 0.75
    assert vs.init.calculate_gain("leaky_relu") == math.sqrt(2 / (1 + 0.01**2))


def test_unknown_nonlinearity_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown nonlinearity 'gelu'") as error:
        vs.init.calculate_gain("gelu")
    for name in ("tanh", "relu", "leaky_relu", "selu", "conv_transpose3d"):
        assert name in str(error.value)
    assert "second_moment_gain" in str(error.value)


def test_leaky_relu_param_must_be_a_number():
    with pytest.raises(ValueError, match="negative slope"):
        vs.init.calculate_gain("leaky_relu", True)
    with pytest.raises(ValueError, match="negative slope"):
        vs.init.calculate_gain("leaky_relu", "0.2")


def test_xavier_std_correct_value_not_the_seed_value():
    # seed 000 prints 0.0543; sqrt(2 / 768) = 0.0510
    assert round(vs.init.xavier_std(512, 256), 4) == 0.0510
    assert vs.init.xavier_std(512, 256) == pytest.approx(math.sqrt(2 / 768), rel=1e-15)
    assert vs.init.xavier_std(512, 256, gain=5 / 3) == pytest.approx(5 / 3 * math.sqrt(2 / 768))


def test_kaiming_std_correct_values_not_the_seed_values():
    assert vs.init.kaiming_std(512, "relu") == 0.0625
    assert vs.init.kaiming_std(512) == 0.0625  # leaky_relu with a=0 is the ReLU gain, as in torch
    # seed 001 prints .3084; (5/3) / sqrt(10) = 0.527
    assert round(vs.init.kaiming_std(10, "tanh"), 3) == 0.527
    assert vs.init.kaiming_std(10, "leaky_relu", a=0.2) == pytest.approx(
        math.sqrt(2 / 1.04) / math.sqrt(10)
    )


def test_seed_001_scaled_weights_have_the_std_the_errata_gives():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(10, 200, generator=g) * ((5 / 3) / 10**0.5)
    assert w.double().std().item() == pytest.approx(0.542, abs=1e-3)
    assert w.double().std().item() == pytest.approx(vs.init.kaiming_std(10, "tanh"), rel=0.05)


def test_kaiming_std_is_the_std_torch_draws_with():
    g = torch.Generator().manual_seed(0)
    w = torch.nn.init.kaiming_normal_(torch.empty(400, 1000), nonlinearity="tanh", generator=g)
    assert w.double().std().item() == pytest.approx(vs.init.kaiming_std(1000, "tanh"), rel=0.01)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_std_formulas_reject_bad_fans(bad):
    with pytest.raises(ValueError, match="fan_in must be a positive int"):
        vs.init.xavier_std(bad, 10)
    with pytest.raises(ValueError, match="fan must be a positive int"):
        vs.init.kaiming_std(bad)


@pytest.mark.parametrize(
    "shape", [(7, 3), (16, 8, 3), (16, 4, 3, 5), (8, 2, 3, 3, 2), (1, 1), (5, 1, 1, 1)]
)
def test_fans_match_torch_receptive_field_rule(shape):
    weight = torch.empty(shape)
    assert vs.init.fan_in_and_fan_out(weight) == torch.nn.init._calculate_fan_in_and_fan_out(weight)


def test_conv_fans_use_the_receptive_field():
    conv = torch.nn.Conv2d(4, 16, kernel_size=(3, 5), groups=2)
    assert vs.init.fan_in_and_fan_out(conv.weight) == (2 * 15, 16 * 15)


def test_fans_of_a_vector_is_a_clear_error():
    with pytest.raises(ValueError, match=r"at least 2 dimensions.*got shape \(5,\)"):
        vs.init.fan_in_and_fan_out(torch.empty(5))


def test_fan_mode_must_be_fan_in_or_fan_out():
    assert fan_for_mode(torch.empty(3, 7), "FAN_OUT", caller="t") == 3
    with pytest.raises(ValueError, match=r"mode must be 'fan_in'.*got 'fan_avg'"):
        fan_for_mode(torch.empty(3, 7), "fan_avg", caller="t")
