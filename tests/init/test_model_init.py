import copy
import math

import pytest
import torch
from torch import nn

import vitalstats as vs


def _model():
    return nn.Sequential(
        nn.Linear(16, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(32, 32),
        nn.Tanh(),
        nn.Linear(32, 32),
        nn.LeakyReLU(0.2),
        nn.Linear(32, 32),
        nn.GELU(),
        nn.Linear(32, 4),
    )


def test_infers_the_activation_after_each_layer_and_says_so():
    found = vs.init.infer_nonlinearities(_model())
    assert {name: f.nonlinearity for name, f in found.items()} == {
        "0": "relu",
        "4": "tanh",
        "6": "leaky_relu",
        "8": "GELU",
        "10": "linear",
    }
    assert found["0"].reason == "inferred: next activation is '2' (ReLU)"
    assert found["6"].param == 0.2 and found["6"].gain == torch.nn.init.calculate_gain(
        "leaky_relu", 0.2
    )
    assert "second-moment gain" in found["8"].reason
    assert found["8"].gain == pytest.approx(vs.init.second_moment_gain(nn.GELU()))
    assert found["10"].reason == "inferred: last layer, no activation follows"


def test_no_activation_between_layers_means_linear():
    found = vs.init.infer_nonlinearities(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.ReLU()))
    assert found["0"].nonlinearity == "linear" and "next layer '1'" in found["0"].reason
    assert found["1"].nonlinearity == "relu"


def test_an_unknown_module_stops_the_search_and_is_named():
    found = vs.init.infer_nonlinearities(
        nn.Sequential(nn.Linear(3, 3), nn.Embedding(3, 3), nn.ReLU())
    )
    assert (
        found["0"].nonlinearity == "linear"
        and "'1' (Embedding) is not an activation" in found["0"].reason
    )


def test_kaiming_scheme_equals_torch_kaiming_layer_by_layer():
    model, reference = _model(), _model()
    vs.init.init_model_(model, "kaiming", generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    layers = [m for m in reference if isinstance(m, nn.Linear)]
    for layer, (name, param) in zip(layers, [("relu", None), ("tanh", None), ("leaky_relu", 0.2)]):
        nn.init.kaiming_normal_(layer.weight, a=param or 0, nonlinearity=name, generator=g)
    for got, expected in zip([m for m in model if isinstance(m, nn.Linear)][:3], layers[:3]):
        assert torch.equal(got.weight, expected.weight)
        assert torch.count_nonzero(got.bias) == 0
    gelu_layer = model[8]
    assert gelu_layer.weight.std().item() == pytest.approx(
        vs.init.second_moment_gain(nn.GELU()) / math.sqrt(32), rel=0.1
    )


def test_xavier_uniform_scheme_equals_torch_with_the_gain():
    model = nn.Sequential(nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 5))
    reference = copy.deepcopy(model)
    records = vs.init.init_model_(
        model, "xavier", distribution="uniform", generator=torch.Generator().manual_seed(0)
    )
    g = torch.Generator().manual_seed(0)
    nn.init.xavier_uniform_(reference[0].weight, gain=5 / 3, generator=g)
    nn.init.xavier_uniform_(reference[2].weight, gain=1.0, generator=g)
    assert torch.equal(model[0].weight, reference[0].weight) and torch.equal(
        model[2].weight, reference[2].weight
    )
    assert [r.gain for r in records] == [5 / 3, 1.0]


def test_default_scheme_is_torchs_reset_parameters():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4))
    reference = copy.deepcopy(model)
    torch.manual_seed(5)
    vs.init.init_model_(model, "default")
    torch.manual_seed(5)
    reference[0].reset_parameters()
    reference[3].reset_parameters()
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_given_nonlinearity_applies_to_every_layer():
    records = vs.init.init_model_(
        _model(), "orthogonal", nonlinearity="tanh", generator=torch.Generator().manual_seed(0)
    )
    assert {r.nonlinearity for r in records} == {"tanh"} and {r.reason for r in records} == {
        "given"
    }
    assert all(r.gain == 5 / 3 for r in records)


def test_records_report_the_realised_weight_std():
    model = nn.Sequential(nn.Linear(400, 300), nn.ReLU())
    (record,) = vs.init.init_model_(model, "kaiming", generator=torch.Generator().manual_seed(0))
    assert record.weight_std == pytest.approx(model[0].weight.double().std(correction=0).item())
    assert record.weight_std == pytest.approx(vs.init.kaiming_std(400, "relu"), rel=0.01)


def test_normal_scheme_is_unit_normal_with_zero_bias():
    model = nn.Sequential(nn.Linear(300, 300))
    vs.init.init_model_(model, "normal", generator=torch.Generator().manual_seed(0))
    assert model[0].weight.std().item() == pytest.approx(1.0, rel=0.01)
    assert torch.count_nonzero(model[0].bias) == 0


def test_lsuv_scheme_delegates_and_reports():
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8))
    records = vs.init.init_model_(model, "lsuv", batch=torch.randn(64, 16))
    assert all(r.reason.startswith("LSUV: ") for r in records)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown scheme 'he'; expected one of kaiming, xavier"):
        vs.init.init_model_(_model(), "he")
    with pytest.raises(ValueError, match="needs batch="):
        vs.init.init_model_(_model(), "lsuv")
    with pytest.raises(ValueError, match="has no Linear or Conv layer"):
        vs.init.init_model_(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="unknown nonlinearity 'gelu'"):
        vs.init.init_model_(_model(), nonlinearity="gelu")
