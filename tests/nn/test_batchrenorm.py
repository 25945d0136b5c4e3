"""vs.nn.BatchRenorm1d/2d: reduces to BatchNorm in warm-up, to the inference output when the
corrections are unclipped, and clips r and d to the scheduled limits (float64 oracles)."""

from __future__ import annotations

import pytest
import torch

import vitalstats as vs

DOUBLE = torch.float64


def _trained_pair(cls, bn_cls, shape, **kwargs):
    """A BatchRenorm and a torch BatchNorm with the same non-default running statistics."""
    renorm = cls(shape[1], dtype=DOUBLE, **kwargs)
    bn = bn_cls(shape[1], dtype=DOUBLE)
    with torch.no_grad():
        for layer in (renorm, bn):
            layer.running_mean.copy_(torch.linspace(-1, 1, shape[1], dtype=DOUBLE))
            layer.running_var.copy_(torch.linspace(0.5, 3, shape[1], dtype=DOUBLE))
            layer.weight.copy_(torch.linspace(0.5, 2, shape[1], dtype=DOUBLE))
            layer.bias.copy_(torch.linspace(-0.3, 0.3, shape[1], dtype=DOUBLE))
    return renorm, bn


@pytest.mark.parametrize(("cls", "bn_cls", "shape"), [
    (vs.nn.BatchRenorm1d, torch.nn.BatchNorm1d, (6, 3)),
    (vs.nn.BatchRenorm2d, torch.nn.BatchNorm2d, (3, 4, 2, 3)),
])  # fmt: skip
def test_during_warmup_it_is_batchnorm_forward_backward_and_buffers(cls, bn_cls, shape) -> None:
    renorm, bn = _trained_pair(cls, bn_cls, shape, warmup_steps=10)
    for _ in range(3):
        x = (torch.randn(shape, dtype=DOUBLE) * 2 + 1).requires_grad_(True)
        y_renorm, y_bn = renorm(x), bn(x)
        torch.testing.assert_close(y_renorm, y_bn, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(y_bn)
        grads_renorm = torch.autograd.grad(y_renorm, (x, renorm.weight, renorm.bias), g)
        grads_bn = torch.autograd.grad(y_bn, (x, bn.weight, bn.bias), g)
        for a, b in zip(grads_renorm, grads_bn, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(renorm.running_mean, bn.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(renorm.running_var, bn.running_var, rtol=1e-12, atol=1e-12)


def test_with_unclipped_corrections_training_output_equals_inference_output() -> None:
    renorm, _ = _trained_pair(vs.nn.BatchRenorm1d, torch.nn.BatchNorm1d, (8, 3),
                              r_max=1e6, d_max=1e6, warmup_steps=0, ramp_steps=0)  # fmt: skip
    renorm.num_batches_tracked.fill_(1)
    x = torch.randn(8, 3, dtype=DOUBLE) * 2 + 1
    eval_output = (x - renorm.running_mean) / torch.sqrt(renorm.running_var + renorm.eps)
    eval_output = eval_output * renorm.weight + renorm.bias
    torch.testing.assert_close(renorm(x), eval_output, rtol=1e-10, atol=1e-10)


def test_gradient_treats_r_and_d_as_constants() -> None:
    """Oracle: float64 autograd through the composite formula with r and d detached."""
    renorm, _ = _trained_pair(vs.nn.BatchRenorm1d, torch.nn.BatchNorm1d, (7, 3),
                              r_max=1.5, d_max=0.5, warmup_steps=0, ramp_steps=0)  # fmt: skip
    renorm.num_batches_tracked.fill_(1)
    x = (torch.randn(7, 3, dtype=DOUBLE) * 3 + 2).requires_grad_(True)
    running_std = torch.sqrt(renorm.running_var + renorm.eps)
    mean, var = x.mean(0), x.var(0, unbiased=False)
    std = torch.sqrt(var + renorm.eps)
    r = (std / running_std).clamp(1 / 1.5, 1.5).detach()
    d = ((mean - renorm.running_mean) / running_std).clamp(-0.5, 0.5).detach()
    expected = ((x - mean) / std * r + d) * renorm.weight + renorm.bias
    actual = renorm(x)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(expected)
    inputs = (x, renorm.weight, renorm.bias)
    for a, b in zip(
        torch.autograd.grad(actual, inputs, g),
        torch.autograd.grad(expected, inputs, g),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_limits_follow_the_warmup_then_linear_ramp_schedule() -> None:
    renorm = vs.nn.BatchRenorm1d(2, r_max=3.0, d_max=5.0, warmup_steps=10, ramp_steps=20)
    expected = {0: (1.0, 0.0), 10: (1.0, 0.0), 20: (2.0, 2.5), 30: (3.0, 5.0), 100: (3.0, 5.0)}
    for steps, (r_limit, d_limit) in expected.items():
        renorm.num_batches_tracked.fill_(steps)
        r_now, d_now = renorm.current_limits()
        assert float(r_now) == pytest.approx(r_limit) and float(d_now) == pytest.approx(d_limit)


def test_state_dict_is_batchnorms_so_a_trained_renorm_loads_into_batchnorm() -> None:
    renorm = vs.nn.BatchRenorm2d(4)
    renorm(torch.randn(3, 4, 5, 5))
    bn = torch.nn.BatchNorm2d(4)
    bn.load_state_dict(renorm.state_dict())
    renorm.eval(), bn.eval()
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(renorm(x), bn(x))


def test_bad_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="r_max >= 1"):
        vs.nn.BatchRenorm1d(3, r_max=0.5)
