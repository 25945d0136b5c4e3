"""vs.stats.EMA against torch.optim.Adam's moments and explicit float64 weighted sums;
vs.stats.EMVar against the two-pass exponentially weighted mean and variance."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vitalstats as vs


def weighted_mean_var(values: list[float], beta: float) -> tuple[float, float]:
    """Two-pass float64 oracle with weights beta^(t - i), normalised (pandas adjust=True)."""
    x = torch.tensor(values, dtype=torch.float64)
    weights = beta ** torch.arange(len(values) - 1, -1, -1, dtype=torch.float64)
    mean = (weights * x).sum() / weights.sum()
    var = (weights * (x - mean) ** 2).sum() / weights.sum()
    return mean.item(), var.item()


def test_raw_ema_equals_adams_exp_avg_and_exp_avg_sq():
    torch.manual_seed(0)
    grads = [torch.randn(5) for _ in range(12)]
    param = torch.nn.Parameter(torch.zeros(5))
    adam = torch.optim.Adam([param], lr=1e-3, betas=(0.9, 0.999))
    first, second = vs.stats.EMA(0.9, bias_correction=False), vs.stats.EMA(0.999, False)
    for grad in grads:
        param.grad = grad.clone()
        adam.step()
        first.update(grad)
        second.update(grad * grad)
    state = adam.state[param]
    torch.testing.assert_close(first.value, state["exp_avg"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(second.value, state["exp_avg_sq"], rtol=1e-6, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=30),
    beta=st.floats(0.0, 0.999),
)
def test_bias_corrected_ema_is_the_normalised_weighted_mean(values, beta):
    ema = vs.stats.EMA(beta)
    for value in values:
        ema.update(value)
    mean, _ = weighted_mean_var(values, beta)
    assert ema.value == pytest.approx(mean, rel=1e-9, abs=1e-9)
    assert ema.step == len(values)


def test_bias_corrected_ema_returns_the_first_value_unchanged():
    assert vs.stats.EMA(0.99).update(3.5).value == pytest.approx(3.5, rel=1e-14)
    tensor = vs.stats.EMA(0.99).update(torch.tensor([1.0, -2.0])).value
    torch.testing.assert_close(tensor, torch.tensor([1.0, -2.0]), rtol=1e-6, atol=0)


def test_ema_tensor_state_keeps_dtype_and_does_not_alias_the_input():
    x = torch.ones(3, dtype=torch.float64)
    ema = vs.stats.EMA(0.5).update(x)
    x.add_(100.0)
    assert ema.value.dtype == torch.float64 and torch.all(ema.value == 1.0)
    assert vs.stats.EMA(0.5).update(torch.ones(2, dtype=torch.float16)).value.dtype == torch.float32


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=30),
    beta=st.floats(0.0, 0.999),
)
def test_emvar_matches_two_pass_weighted_statistics(values, beta):
    emvar = vs.stats.EMVar(beta)
    for value in values:
        emvar.update(value)
    mean, var = weighted_mean_var(values, beta)
    assert emvar.mean == pytest.approx(mean, rel=1e-9, abs=1e-9)
    assert emvar.var == pytest.approx(var, rel=1e-7, abs=1e-7)
    assert emvar.std == pytest.approx(math.sqrt(var), rel=1e-6, abs=1e-6)


def test_emvar_is_stable_for_a_loss_far_from_zero():
    torch.manual_seed(1)
    losses = (1e4 + 1e-3 * torch.randn(500, dtype=torch.float64)).tolist()
    beta = 0.98
    emvar = vs.stats.EMVar(beta)
    for loss in losses:
        emvar.update(loss)
    _, var = weighted_mean_var(losses, beta)
    assert emvar.var == pytest.approx(var, rel=1e-6)
    # the naive E[x^2] - E[x]^2 with the same weights loses everything in float64
    x = torch.tensor(losses, dtype=torch.float64)
    weights = beta ** torch.arange(len(losses) - 1, -1, -1, dtype=torch.float64)
    weights = weights / weights.sum()
    naive = ((weights * x * x).sum() - (weights * x).sum() ** 2).item()
    assert abs(naive - var) / var > 1e-3


def test_emvar_on_tensors_matches_floats_and_avoids_host_reads(monkeypatch):
    values = [2.0, 3.0, 2.5, 10.0]
    reference = vs.stats.EMVar(0.9)
    for value in values:
        reference.update(value)
    emvar = vs.stats.EMVar(0.9)

    def forbidden(*args, **kwargs):
        raise AssertionError("host read")

    tensors = [torch.tensor(value) for value in values]
    for name in ("item", "tolist", "__float__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for tensor in tensors:
        emvar.update(tensor)
    mean, std = emvar.mean, emvar.std
    monkeypatch.undo()
    assert mean.dtype == torch.float64
    assert mean.item() == pytest.approx(reference.mean, rel=1e-14)
    assert std.item() == pytest.approx(reference.std, rel=1e-12)


def test_state_dicts_round_trip():
    ema, emvar = vs.stats.EMA(0.9), vs.stats.EMVar(0.8)
    for value in (1.0, 4.0, 2.0):
        ema.update(value)
        emvar.update(value)
    ema2, emvar2 = vs.stats.EMA(0.1), vs.stats.EMVar(0.1)
    ema2.load_state_dict(ema.state_dict())
    emvar2.load_state_dict(emvar.state_dict())
    assert ema2.update(5.0).value == ema.update(5.0).value
    assert emvar2.update(5.0).var == emvar.update(5.0).var


def test_bad_beta_and_early_reads_raise_clear_errors():
    with pytest.raises(ValueError, match=r"EMA: beta=1.0 is outside \[0, 1\)"):
        vs.stats.EMA(1.0)
    with pytest.raises(ValueError, match=r"EMVar: beta=-0.1"):
        vs.stats.EMVar(-0.1)
    with pytest.raises(RuntimeError, match=r"EMA.value: no value yet"):
        vs.stats.EMA(0.9).value
    with pytest.raises(RuntimeError, match=r"EMVar.var: no value yet"):
        vs.stats.EMVar(0.9).var
