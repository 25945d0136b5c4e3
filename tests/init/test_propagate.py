"""propagate() against plain float64 forwards and plain autograd."""

import copy
import json
import math

import pytest
import torch
from torch import nn

import vitalstats as vs


def _mlp(activation=nn.Tanh, width=48, depth=3, seed=0):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), activation()]
    return nn.Sequential(*layers)


def _float64_outputs(model, x):
    """Every layer's output of a Sequential, run in float64 by hand, with output gradients for
    the loss sum(y_last * g), g ~ N(0, 1) from a seed-0 generator."""
    reference = copy.deepcopy(model).double()
    h = x.double()
    outputs = []
    for layer in reference:
        h = layer(h)
        h.retain_grad()
        outputs.append(h)
    direction = torch.randn(h.shape, generator=torch.Generator().manual_seed(0)).double()
    (h * direction).sum().backward()
    return outputs


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU, nn.Sigmoid, nn.LeakyReLU])
def test_measured_statistics_match_a_float64_forward(activation):
    model, x = _mlp(activation), torch.randn(64, 48, generator=torch.Generator().manual_seed(1))
    report = vs.init.propagate(model, x)
    outputs = _float64_outputs(model, x)
    assert [layer.name for layer in report] == [str(i) for i in range(6)]
    for layer, y in zip(report, outputs):
        assert layer.mean == pytest.approx(y.mean().item(), abs=1e-6)
        assert layer.std == pytest.approx(y.std(correction=0).item(), rel=1e-5)
        assert layer.grad_std == pytest.approx(y.grad.std(correction=0).item(), rel=1e-4)
    assert report.input_std == pytest.approx(x.double().std(correction=0).item(), rel=1e-6)


def test_saturated_and_zero_fractions_match_their_definitions():
    x = 2.0 * torch.randn(64, 48, generator=torch.Generator().manual_seed(1))
    for activation, field, definition in [
        (nn.Tanh, "saturated_fraction", lambda y: (y.abs() > 0.97).double().mean()),
        (nn.Sigmoid, "saturated_fraction", lambda y: ((y > 0.97) | (y < 0.03)).double().mean()),
        (nn.ReLU, "zero_fraction", lambda y: (y == 0).double().mean()),
        (nn.LeakyReLU, "zero_fraction", lambda y: (y <= 0).double().mean()),
    ]:
        model = _mlp(activation)
        report = vs.init.propagate(model, x)
        outputs = _float64_outputs(model, x)
        for layer, y in zip(report, outputs):
            if layer.type.startswith(activation.__name__):
                assert getattr(layer, field) == pytest.approx(definition(y).item(), abs=1e-6)
            else:
                assert getattr(layer, field) is None


def test_tanh_saturation_appears_with_unscaled_normal_weights():
    model = vs.init.build_mlp(3, 64, "tanh", "normal", generator=torch.Generator().manual_seed(0))
    report = vs.init.propagate(model, torch.randn(128, 64))
    assert all(layer.saturated_fraction > 0.7 for layer in report if layer.type == "Tanh")


def test_theory_tracks_a_kaiming_tanh_network():
    g = torch.Generator().manual_seed(0)
    model = vs.init.build_mlp(6, 512, "tanh", "kaiming", generator=g)
    report = vs.init.propagate(model, torch.randn(256, 512, generator=g))
    for layer in report:
        assert layer.predicted_std == pytest.approx(layer.std, rel=0.05), layer


def test_theory_tracks_a_conv_bn_relu_network_and_conv_fans_use_the_kernel():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 64, 10),
    )
    report = vs.init.propagate(model, torch.randn(32, 3, 8, 8))
    assert (report[0].fan_in, report[0].fan_out) == (27, 144)
    for layer in report:
        assert layer.predicted_std == pytest.approx(layer.std, rel=0.15), layer


def test_in_place_relu_keeps_the_linear_rows_pre_activation():
    model = _mlp(lambda: nn.ReLU(inplace=True))
    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(1))
    report = vs.init.propagate(model, x)
    outputs = _float64_outputs(_mlp(nn.ReLU), x)  # same weights (same seed), not in place
    for layer, y in zip(report, outputs):
        assert layer.std == pytest.approx(y.std(correction=0).item(), rel=1e-5)
        assert layer.grad_std == pytest.approx(y.grad.std(correction=0).item(), rel=1e-4)
    assert report["0"].predicted_std == pytest.approx(report["0"].std, rel=0.1)


def test_propagate_leaves_the_model_as_it_found_it():
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    model[1].momentum = None
    before = copy.deepcopy(model.state_dict())
    vs.init.propagate(model, torch.randn(16, 8))
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert all(p.grad is None for p in model.parameters())
    assert model.training and all(not m._forward_hooks for m in model.modules())


def test_eval_mode_batch_norm_uses_running_statistics():
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Tanh()).eval()
    with torch.no_grad():
        model[1].running_var.fill_(4.0)
    x = torch.randn(64, 8)
    report = vs.init.propagate(model, x)
    with torch.no_grad():
        expected = model[1](model[0](x))
    assert report["1"].std == pytest.approx(expected.std(correction=0).item(), rel=1e-5)
    assert report["1"].predicted_std == pytest.approx(report["0"].predicted_std / 2, rel=1e-3)
    assert not model.training


def test_forward_only_has_no_gradients():
    report = vs.init.propagate(_mlp(), torch.randn(8, 48), backward=False)
    assert all(layer.grad_std is None for layer in report)
    assert report.backward is False


def test_a_layer_called_twice_gets_two_rows():
    shared = nn.Linear(6, 6)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = shared

        def forward(self, x):
            return self.shared(torch.tanh(self.shared(x)))

    report = vs.init.propagate(Twice(), torch.randn(10, 6))
    assert [layer.name for layer in report] == ["shared", "shared#2"]
    # the second call's input came from an untracked op (torch.tanh): theory re-anchors on it
    assert report[1].predicted_std == pytest.approx(report[1].std, rel=0.3)


def test_to_dict_is_json_and_str_is_a_table():
    report = vs.init.propagate(_mlp(depth=1), torch.randn(8, 48))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["layers"][0] == report[0].to_dict()
    assert set(data["layers"][0]) == {
        "name",
        "type",
        "fan_in",
        "fan_out",
        "mean",
        "std",
        "predicted_std",
        "saturated_fraction",
        "zero_fraction",
        "grad_std",
    }
    text = str(report)
    assert "theory" in text and "Linear" in text and "Tanh" in text and "(input)" in text
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        report["nope"]


def test_seed_004_unit_weights_give_variance_fan_in_and_scaling_gives_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 512, generator=g)
    layer = nn.Linear(512, 4096, bias=False)
    nn.init.normal_(layer.weight, generator=g)
    assert vs.init.propagate(layer, x)[0].std ** 2 == pytest.approx(512, rel=0.05)
    with torch.no_grad():
        layer.weight.div_(512**0.5)
    assert vs.init.propagate(layer, x)[0].std ** 2 == pytest.approx(1, rel=0.05)


def test_seed_001_one_layer_triples_the_std():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 10, generator=g)
    w = torch.randn(10, 200, generator=g)
    layer = nn.Linear(10, 200, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w.T)  # x @ w == layer(x)
    report = vs.init.propagate(layer, x)
    assert report[0].std == pytest.approx(3.2211, abs=1e-3)  # the seed's printed value
    assert report[0].std / report.input_std == pytest.approx(math.sqrt(10), rel=0.05)


def test_default_linear_init_shrinks_variance_three_fold_per_layer():
    g = torch.Generator().manual_seed(0)
    model = vs.init.build_mlp(8, 512, "linear", "default", bias=False, generator=g)
    report = vs.init.propagate(model, torch.randn(256, 512, generator=g))
    assert report.variance_ratio_per_weight_layer() == pytest.approx(1 / 3, rel=0.03)


class _IntegerOnly(nn.Module):
    def forward(self, x):
        return x + 1


def test_bad_inputs_are_clear_errors():
    with pytest.raises(TypeError, match=r"model must be an nn\.Module; got function"):
        vs.init.propagate(lambda x: x, torch.randn(2))
    with pytest.raises(ValueError, match="no leaf layer of _IntegerOnly produced a floating-point"):
        vs.init.propagate(_IntegerOnly(), torch.arange(3))


class _FunctionalInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.linear(x).relu_())


def test_an_untracked_in_place_op_is_named_and_its_row_is_nan():
    with pytest.warns(UserWarning, match=r"outputs of \['linear'\] were overwritten in place"):
        report = vs.init.propagate(_FunctionalInPlace(), torch.randn(8, 4))
    assert math.isnan(report["linear"].std) and report["linear"].grad_std is None
    assert report["out"].std > 0 and report["out"].grad_std == pytest.approx(1.0, rel=0.5)


def test_an_in_place_module_on_the_model_input_measures_the_input_first():
    x = torch.randn(32, 6)
    original = x.clone()
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(6, 3))
    report = vs.init.propagate(model, x)
    assert report.input_std == pytest.approx(original.double().std(correction=0).item(), rel=1e-5)
    # the ReLU's theory starts from the input before the ReLU overwrote it
    assert report["0"].predicted_std == pytest.approx(report["0"].std, rel=0.2)


def test_an_embedding_with_integer_input_starts_the_chain_at_its_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 64), nn.Linear(64, 32), nn.Tanh())
    tokens = torch.randint(0, 50, (16, 10))
    report = vs.init.propagate(model, tokens)
    assert [layer.type for layer in report] == ["Embedding", "Linear", "Tanh"]
    assert report[0].predicted_std is None and math.isnan(report.input_std)
    assert report[0].std == pytest.approx(
        model[0](tokens).double().std(correction=0).item(), rel=1e-5
    )
    assert report[1].predicted_std == pytest.approx(report[1].std, rel=0.1)
    assert all(layer.grad_std is not None for layer in report)


def test_under_no_grad_only_the_forward_runs_and_the_report_says_so():
    with torch.no_grad():
        report = vs.init.propagate(_mlp(depth=1), torch.randn(8, 48))
    assert report.backward is False and all(layer.grad_std is None for layer in report)


def test_importing_vs_init_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, vitalstats.init; "
        "print(' '.join(m for m in ('matplotlib', 'scipy', 'rich') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
