"""The seed documents' examples (seed 002), run with vitalstats layers. Where the seed is
wrong (ERRATA: the manual BatchNorm's running_var), the test shows the correct behaviour."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vitalstats as vs


class BatchNorm1DManual(nn.Module):
    """Seed 002's from-scratch BatchNorm, verbatim in behaviour (biased running_var)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            batch_mean, batch_var = x.mean(dim=0), x.var(dim=0, unbiased=False)
            self.running_mean = (1 - self.momentum) * self.running_mean + self.momentum * batch_mean
            self.running_var = (1 - self.momentum) * self.running_var + self.momentum * batch_var
            x_norm = (x - batch_mean) / torch.sqrt(batch_var + self.eps)
        else:
            x_norm = (x - self.running_mean) / torch.sqrt(self.running_var + self.eps)
        return self.gamma * x_norm + self.beta


def test_manual_batchnorm_comparison_outputs_agree_and_running_var_shows_the_erratum() -> None:
    x = torch.randn(32, 10)
    manual, ours = BatchNorm1DManual(10).train(), vs.nn.BatchNorm1d(10).train()
    out_manual, out_ours = manual(x), ours(x)
    torch.testing.assert_close(out_ours, out_manual, rtol=1e-5, atol=1e-5)
    assert abs(float(out_ours.detach().mean())) < 1e-6
    assert abs(float(out_ours.detach().std()) - 1) < 0.02
    torch.testing.assert_close(ours.running_mean, manual.running_mean)
    # ERRATA: torch and vitalstats track the *unbiased* variance; the seed tracks the biased one
    unbiased_update = 0.9 + 0.1 * x.var(0, unbiased=True)
    torch.testing.assert_close(ours.running_var, unbiased_update)
    assert not torch.allclose(ours.running_var, manual.running_var)


class ClinicalMLPWithBN(nn.Module):
    def __init__(self, n_features: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_features, 64), vs.nn.BatchNorm1d(64), nn.ReLU(),
            nn.Linear(64, 32), vs.nn.BatchNorm1d(32), nn.ReLU(),
            nn.Linear(32, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvBlock(nn.Module):
    def __init__(self, in_c: int, out_c: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_c, out_c, 3, padding=1, bias=False), vs.nn.BatchNorm2d(out_c),
            nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class TransformerBlock(nn.Module):
    """Seed 002's block with the attention it omits (ERRATA): a real pre-norm block is
    x = x + attn(norm1(x)); x = x + ff(norm2(x))."""

    def __init__(self, d_model: int = 32, d_ff: int = 64, heads: int = 4):
        super().__init__()
        self.norm1, self.norm2 = vs.nn.LayerNorm(d_model), vs.nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.norm2(x))


def test_clinical_mlp_trains_and_matches_its_torch_twin() -> None:
    torch.manual_seed(0)
    mlp = ClinicalMLPWithBN(n_features=20).train()
    twin = vs.nn.swap_norm_layers(ClinicalMLPWithBN(n_features=20), to="torch")
    twin.load_state_dict(mlp.state_dict())
    x = torch.randn(32, 20)
    out = mlp(x)
    assert out.shape == (32, 1)
    torch.testing.assert_close(out, twin(x), rtol=1e-4, atol=1e-5)


def test_batch_of_one_fails_in_training_and_works_in_eval() -> None:
    model = nn.Sequential(nn.Linear(10, 32), vs.nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 1))
    model.train()
    model(torch.randn(64, 10))
    with pytest.raises(ValueError, match=r"more than 1 value per channel.*model\.eval\(\)"):
        model(torch.randn(1, 10))
    model.eval()
    assert model(torch.randn(1, 10)).shape == (1, 1)


def test_conv_block_output_is_channel_standardised_before_relu() -> None:
    block = ConvBlock(3, 8).train()
    x = torch.randn(4, 3, 8, 8)
    pre_relu = block.block[1](block.block[0](x))
    torch.testing.assert_close(pre_relu.mean((0, 2, 3)), torch.zeros(8), rtol=0, atol=1e-5)
    assert block(x).shape == (4, 8, 8, 8) and bool((block(x) >= 0).all())


def test_layer_norm_vs_batch_norm_axes() -> None:
    x = torch.randn(8, 32)
    out_bn, out_ln = vs.nn.BatchNorm1d(32).train()(x), vs.nn.LayerNorm(32)(x)
    torch.testing.assert_close(out_bn.mean(0), torch.zeros(32), rtol=0, atol=1e-6)
    torch.testing.assert_close(out_ln.mean(1), torch.zeros(8), rtol=0, atol=1e-6)


def test_pre_norm_transformer_block_runs_and_backpropagates() -> None:
    block = TransformerBlock()
    x = torch.randn(2, 5, 32, requires_grad=True)
    y = block(x)
    y.square().mean().backward()
    assert y.shape == x.shape and x.grad is not None and block.norm1.weight.grad is not None
