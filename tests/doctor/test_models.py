"""The doctor's models carry the initialisation each configuration claims."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vitalstats.doctor.models import (
    CONFIGURATIONS,
    TANH_HIDDEN_LAYERS,
    build_optimizer,
    clinical_mlp_kaiming_bn,
    clinical_mlp_naive,
    configurations,
    deep_tanh_naive,
    deep_tanh_with_gain,
    deep_tanh_without_gain,
    digits_cnn_keras_habits,
    digits_cnn_torch_conventions,
)


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def _assert_std(weight: torch.Tensor, expected: float) -> None:
    # The sample std of n normal draws has relative standard error ~ 1 / sqrt(2n): allow 5 of them.
    tolerance = 5 / math.sqrt(2 * weight.numel())
    assert abs(weight.std().item() / expected - 1) < tolerance, (weight.std().item(), expected)


def test_naive_mlp_has_unit_normal_weights_and_no_norm():
    torch.manual_seed(0)
    model = clinical_mlp_naive(30, 2)
    for linear in _linears(model):
        _assert_std(linear.weight, 1.0)
        assert torch.all(linear.bias == 0)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


def test_kaiming_bn_mlp_uses_relu_gain_and_no_bias_before_norm():
    torch.manual_seed(0)
    model = clinical_mlp_kaiming_bn(30, 2)
    first, second, head = _linears(model)
    _assert_std(first.weight, math.sqrt(2 / 30))
    _assert_std(second.weight, math.sqrt(2 / 64))
    _assert_std(head.weight, math.sqrt(1 / 32))
    assert first.bias is None and second.bias is None
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 2


def test_tanh_stacks_differ_only_by_the_5_over_3_gain():
    torch.manual_seed(0)
    plain = deep_tanh_without_gain(64, 10)
    torch.manual_seed(0)
    gained = deep_tanh_with_gain(64, 10)
    hidden_plain, hidden_gained = (
        _linears(plain)[:TANH_HIDDEN_LAYERS],
        _linears(gained)[:TANH_HIDDEN_LAYERS],
    )
    assert sum(isinstance(m, nn.Tanh) for m in plain.modules()) == TANH_HIDDEN_LAYERS
    for a, b in zip(hidden_plain, hidden_gained):
        _assert_std(a.weight, 1 / math.sqrt(a.in_features))
        torch.testing.assert_close(b.weight, a.weight * (5 / 3))


def test_naive_tanh_stack_has_unit_normal_hidden_weights():
    torch.manual_seed(0)
    for linear in _linears(deep_tanh_naive(64, 10))[:TANH_HIDDEN_LAYERS]:
        _assert_std(linear.weight, 1.0)


def test_cnn_configurations_differ_in_conv_bias_and_momentum():
    good, habits = digits_cnn_torch_conventions(64, 10), digits_cnn_keras_habits(64, 10)
    for model, bias, momentum in ((good, False, 0.1), (habits, True, 0.99)):
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all((conv.bias is not None) == bias for conv in convs)
        assert all(norm.momentum == momentum for norm in norms)
        assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


@pytest.mark.parametrize("config", CONFIGURATIONS, ids=lambda c: c.name)
def test_every_configuration_builds_and_runs(config):
    features, classes = (30, 2) if config.dataset == "breast_cancer" else (64, 10)
    model = config.build(features, classes)
    x = torch.randn(8, features) if config.dataset == "breast_cancer" else torch.randn(8, 1, 8, 8)
    out = model(x)
    assert out.shape == (8, 1 if classes == 2 else classes)
    optimizer = build_optimizer(config, model)
    assert optimizer.param_groups[0]["lr"] == config.lr


def test_configurations_per_family_and_unknown_family_error():
    assert [c.name for c in configurations(("tanh",))] == [
        "tanh/naive-init",
        "tanh/no-gain",
        "tanh/gain-5-3",
    ]
    assert [c.family for c in configurations()] == [
        "mlp",
        "mlp",
        "cnn",
        "cnn",
        "tanh",
        "tanh",
        "tanh",
    ]
    with pytest.raises(ValueError, match="unknown model family"):
        configurations(("resnet",))
