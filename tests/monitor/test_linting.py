"""vs.lint: static checks, and one side-effect-free forward with an example input."""

from __future__ import annotations

import torch
from torch import nn

import vitalstats as vs
from tests.monitor.helpers import codes


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16, momentum=0.9), nn.ReLU(), nn.Linear(16, 4)
    )


def test_static_checks_without_an_input():
    findings = vs.lint(_model())
    assert codes(findings) == {"BIAS_BEFORE_NORM", "BN_HIGH_MOMENTUM"}
    assert all(f.step is None for f in findings)


def test_clean_model_has_no_static_findings():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)
    )
    assert vs.lint(model) == []
    assert vs.lint(model, torch.randn(32, 8)) == []


def test_flipped_frozen_and_poisoned_batchnorm():
    model = _model()
    bn = model[1]
    bn.track_running_stats = False
    bn.weight.requires_grad_(False)
    bn.bias.requires_grad_(False)
    bn.track_running_stats = True
    bn.running_var[3] = float("nan")
    found = codes(vs.lint(model))
    assert {"BN_FROZEN_BUT_UPDATING", "BN_RUNNING_NONFINITE"} <= found
    bn.track_running_stats = False
    assert "BN_TRACK_RUNNING_STATS_FLIPPED" in codes(vs.lint(model))


def test_example_input_adds_initialisation_checks_and_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(
        *[nn.Linear(32, 32, bias=False) for _ in range(8)], nn.BatchNorm1d(32), nn.Linear(32, 2)
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    findings = vs.lint(model, torch.randn(4, 32))
    assert {"ACT_STD_DEPTH", "BN_FEW_VALUES"} <= codes(findings)
    assert "BN_TRAIN_IN_EVAL" not in codes(findings)  # lint's own no_grad forward
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert all(p.grad is None for p in model.parameters())


def test_example_input_finds_the_layer_producing_nan():
    class Log(nn.Module):
        def forward(self, x):
            return torch.log(x)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), Log(), nn.Linear(4, 2))
    found = [f for f in vs.lint(model, torch.randn(8, 4)) if f.code.startswith("NONFINITE")]
    assert [(f.code, f.layer) for f in found] == [("NONFINITE_FORWARD", "1")]


def test_lint_accepts_tuple_inputs_and_wrapped_models():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x, scale):
            return self.a(x) * scale

    assert vs.lint(torch.compile(Two()), (torch.randn(2, 4), 2.0)) == []
