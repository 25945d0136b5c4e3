"""The mean-field predictions against independent oracles: closed forms, scipy quadrature,
Monte Carlo in float64."""

import math

import pytest
import torch
from scipy import integrate
from torch import nn

import vitalstats as vs
from vitalstats.init.theory import GaussianMoments, gaussian_through, parameter_summary, predict


def _scipy_moments(f, mean, std):
    density = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    first = integrate.quad(lambda z: f(mean + std * z) * density(z), -40, 40, limit=200)[0]
    second = integrate.quad(
        lambda z: (f(mean + std * z) - first) ** 2 * density(z), -40, 40, limit=200
    )[0]
    return first, second


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.7, 0.3), (-1.5, 2.0)])
def test_relu_moments_match_the_closed_form(mean, std):
    a = mean / std
    cdf, pdf = 0.5 * (1 + math.erf(a / math.sqrt(2))), math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    expected_mean = mean * cdf + std * pdf
    expected_second = (mean**2 + std**2) * cdf + mean * std * pdf
    got = gaussian_through(nn.ReLU(), GaussianMoments(mean, std**2))
    # the trapezoid rule is spectrally accurate for smooth f; the kink costs ~1e-6 relative
    assert got.mean == pytest.approx(expected_mean, rel=1e-5, abs=1e-9)
    assert got.var == pytest.approx(expected_second - expected_mean**2, rel=1e-5)


@pytest.mark.parametrize(
    "module,f",
    [
        (nn.Tanh(), math.tanh),
        (nn.Sigmoid(), lambda x: 1 / (1 + math.exp(-x))),
        (nn.GELU(), lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2)))),
        (nn.SiLU(), lambda x: x / (1 + math.exp(-x))),
    ],
)
@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.4, 2.5), (-0.2, 0.05)])
def test_smooth_activation_moments_match_scipy_quadrature(module, f, mean, std):
    expected_mean, expected_var = _scipy_moments(f, mean, std)
    got = gaussian_through(module, GaussianMoments(mean, std**2))
    assert got.mean == pytest.approx(expected_mean, rel=1e-7, abs=1e-10)
    assert got.var == pytest.approx(expected_var, rel=1e-6)


def test_second_moment_gain_of_relu_is_sqrt_two_and_of_linear_is_one():
    assert vs.init.second_moment_gain(nn.ReLU()) == pytest.approx(math.sqrt(2), rel=1e-6)
    assert vs.init.second_moment_gain(nn.Identity()) == pytest.approx(1.0, rel=1e-9)
    _, tanh_second = _scipy_moments(math.tanh, 0.0, 1.0)
    assert vs.init.second_moment_gain(nn.Tanh()) == pytest.approx(
        1 / math.sqrt(tanh_second), rel=1e-7
    )


def test_second_moment_gain_rejects_non_elementwise_modules():
    with pytest.raises(ValueError, match="Linear is not an elementwise activation"):
        vs.init.second_moment_gain(nn.Linear(2, 2))


def _monte_carlo_linear(layer, mean, std, samples=4000):
    g = torch.Generator().manual_seed(0)
    x = mean + std * torch.randn(samples, layer.in_features, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = nn.functional.linear(
            x, layer.weight.double(), None if layer.bias is None else layer.bias.double()
        )
    return y.mean().item(), y.var(correction=0).item()


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.6, 0.8)])
def test_linear_prediction_matches_monte_carlo_on_the_same_weights(mean, std):
    torch.manual_seed(0)
    layer = nn.Linear(128, 96)
    with torch.no_grad():
        layer.weight.add_(0.01)  # non-zero mean weights exercise the mean terms
    summary = parameter_summary(layer).tolist()
    got = predict(layer, summary, GaussianMoments(mean, std**2))
    mc_mean, mc_var = _monte_carlo_linear(layer, mean, std)
    assert got.mean == pytest.approx(mc_mean, abs=0.02 * math.sqrt(mc_var))
    assert got.var == pytest.approx(mc_var, rel=0.03)


def test_batch_norm_training_predicts_gamma_scale_and_beta_spread():
    bn = nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5, 1.0]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 0.0]))
    got = predict(bn, parameter_summary(bn).tolist(), GaussianMoments(3.0, 9.0))
    assert got.mean == pytest.approx(0.0)
    expected_var = (1 + 4 + 0.25 + 1) / 4 * 9 / (9 + 1e-5) + 0.5  # mean(gamma^2) + var(beta)
    assert got.var == pytest.approx(expected_var)


def test_batch_norm_eval_applies_running_statistics():
    bn = nn.BatchNorm1d(3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -1.0, 0.0]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 2.0 * torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = bn.double()(x)
    bn.float()
    got = predict(bn, parameter_summary(bn).tolist(), GaussianMoments(0.5, 4.0))
    assert got.mean == pytest.approx(y.mean().item(), abs=0.01)
    assert got.var == pytest.approx(y.var(correction=0).item(), rel=0.01)


def test_dropout_in_training_scales_the_second_moment():
    got = predict(nn.Dropout(0.2).train(), None, GaussianMoments(1.0, 3.0))
    assert got.mean == 1.0 and got.var == pytest.approx(4.0 / 0.8 - 1.0)
    assert predict(nn.Dropout(0.2).eval(), None, GaussianMoments(1.0, 3.0)) == GaussianMoments(
        1.0, 3.0
    )


def test_layers_without_a_rule_have_no_prediction():
    assert predict(nn.MaxPool1d(2), None, GaussianMoments(0.0, 1.0)) is None
    assert parameter_summary(nn.ConvTranspose2d(2, 2, 3)) is None


@pytest.mark.parametrize(
    "module,slopes",
    [
        (nn.ReLU(), (0.0, 0.0)),
        (nn.LeakyReLU(0.2), (0.2, 0.04)),
        (nn.PReLU(init=0.3), (0.3, 0.09)),
    ],
)
@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (1.5, 0.4), (-3.0, 1.0)])
def test_rectifiers_use_a_closed_form_that_matches_scipy(module, slopes, mean, std):
    slope = slopes[0]
    expected_mean, expected_var = _scipy_moments(lambda x: x if x > 0 else slope * x, mean, std)
    got = predict(module, None, GaussianMoments(mean, std**2))
    assert got.mean == pytest.approx(expected_mean, rel=1e-7, abs=1e-15)
    assert got.var == pytest.approx(expected_var, rel=1e-6, abs=1e-30)


def test_rrelu_in_training_uses_the_mean_square_of_its_random_slope():
    module = nn.RReLU(0.1, 0.5).train()
    g = torch.Generator().manual_seed(0)
    x = 0.2 + 1.5 * torch.randn(2_000_000, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    with torch.no_grad():
        y = module(x)
    got = predict(module, None, GaussianMoments(0.2, 1.5**2))
    assert got.mean == pytest.approx(y.mean().item(), abs=2e-3)
    assert got.var == pytest.approx(y.var().item(), rel=3e-3)


def test_batched_summaries_equal_float64_sums_of_each_weight():
    torch.manual_seed(0)
    layers = [
        nn.Linear(30, 20),
        nn.Linear(30, 20, bias=False),
        nn.Conv2d(3, 8, 3),
        nn.Linear(30, 20),
    ]
    summaries = vs.init.theory.parameter_summaries(layers)
    for layer in layers:
        rows = layer.weight.detach().double().flatten(1)
        s, r = rows.sum(1), rows.square().sum(1)
        b = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(s)
        cov = ((s - s.mean()) * (b - b.mean())).mean()
        expected = [s.mean(), s.var(correction=0), r.mean(), b.mean(), b.var(correction=0), cov]
        torch.testing.assert_close(
            summaries[id(layer)], torch.stack(expected), rtol=1e-5, atol=1e-7
        )
