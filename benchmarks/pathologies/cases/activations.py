"""Activations: saturated tanh/sigmoid, dead ReLUs, activation std that shrinks or grows with
depth (bad initialisation)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pathologies.case import Case, Proof, at_least, at_most, register
from pathologies.cases.gradients import FlatDigitsCase
from pathologies.data import Batches, digits, tabular
from pathologies.models import cnn, mlp
from pathologies.proofs import dead_share, saturated_share, weighted_output_stds


class DigitsImageCase(FlatDigitsCase):
    """Digits as (N, 1, 8, 8) images, batch 64 (``raw``: pixel values 0..16)."""

    raw = False

    def data(self) -> None:
        x, y = digits(standardise=not self.raw)
        self.batches = Batches(x, y, batch_size=64)


@register
class SaturatedMlpTanh(FlatDigitsCase):
    name = "saturated_mlp_tanh_unit_normal_init"
    arch = "MLP 64-200-200-10 Tanh"
    category = "saturated_activations"
    summary = "weights drawn from randn (std 1, makemore's first try), Tanh, SGD lr 0.05"

    def setup(self) -> None:
        self.data()
        self.model = mlp((64, 200, 200, 10), activation=nn.Tanh)
        for m in self.model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=1.0)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

    def prove(self, losses: list[float]) -> Proof:
        x, _ = self.batches(0)
        share = saturated_share(self.model, lambda: self.model(x))
        return at_least("share of |tanh| > 0.97 after training", share, 0.5)


@register
class SaturatedCnnSigmoidRaw(DigitsImageCase):
    name = "saturated_cnn_sigmoid_raw_pixels"
    arch = "CNN 2x(conv-Sigmoid-pool)"
    category = "saturated_activations"
    summary = (
        "raw pixel values 0..16 into conv-Sigmoid blocks with N(0, 1) conv weights, Adam lr 1e-3"
    )
    raw = True

    def setup(self) -> None:
        self.data()
        self.model = cnn((16, 32), activation=nn.Sigmoid)
        for m in self.model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=1.0)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def prove(self, losses: list[float]) -> Proof:
        x, _ = self.batches(0)
        share = saturated_share(self.model, lambda: self.model(x))
        return at_least("share of |2 sigmoid - 1| > 0.97 after training", share, 0.5)


@register
class DeadReluMlpBias(Case):
    name = "dead_relu_mlp_negative_bias"
    arch = "MLP 30-128-128-2 ReLU"
    category = "dead_relu"
    summary = "standardised breast cancer, hidden biases initialised to -2, Adam lr 1e-3"
    steps = 300

    def setup(self) -> None:
        x, y = tabular("breast_cancer")
        self.batches = Batches(x, y, batch_size=32)
        self.model = mlp((30, 128, 128, 2))
        for m in list(self.model)[:-1]:
            if isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, -2.0)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss

    def prove(self, losses: list[float]) -> Proof:
        x, _ = self.batches(0)
        return at_least(
            "share of ReLU units zero on a whole batch, after training",
            dead_share(self.model, lambda: self.model(x)),
            0.5,
        )


@register
class DeadReluCnnLrSpike(DigitsImageCase):
    name = "dead_relu_cnn_lr_spike"
    also_root = ("LR_TOO_HIGH",)  # the planted cause is the lr spike that kills the units
    arch = "CNN 2x(conv-ReLU-pool)"
    category = "dead_relu"
    summary = "SGD lr 0.05, but a schedule bug sets lr 20 for steps 100-104; units die"

    def setup(self) -> None:
        self.data()
        self.model = cnn((16, 32))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

    def train_step(self, step: int) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = 20.0 if 100 <= step < 105 else 0.05
        return super().train_step(step)

    def prove(self, losses: list[float]) -> Proof:
        x, _ = self.batches(0)
        return at_least(
            "share of ReLU units zero on a whole batch, after training",
            dead_share(self.model, lambda: self.model(x)),
            0.5,
        )


def depth_ratio(stds: list[float]) -> float:
    hidden = stds[:-1]  # the output layer's scale is a design choice
    return hidden[-1] / hidden[0]


@register
class BadInitMlpDefault(FlatDigitsCase):
    name = "bad_init_mlp_default_init_8_layers"
    arch = "MLP 8 x Linear(256)-ReLU"
    category = "bad_init"
    summary = "torch's default Linear init (std 1/sqrt(3 fan_in)) under ReLU: std falls ~2.4x per layer; Adam lr 1e-3"

    def setup(self) -> None:
        self.data()
        self.model = mlp((64,) + (256,) * 8 + (10,))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def before_training(self) -> None:
        x, _ = self.batches(0)
        self.ratio = depth_ratio(weighted_output_stds(self.model, lambda: self.model(x)))

    def prove(self, losses: list[float]) -> Proof:
        return at_most("std(last hidden Linear out) / std(first) at init", self.ratio, 0.1)


@register
class BadInitCnnLarge(DigitsImageCase):
    name = "bad_init_cnn_large_init_6_layers"
    arch = "CNN 6 x conv3x3(32)-ReLU"
    category = "bad_init"
    summary = "conv weights N(0, (3 x Kaiming std)^2): std grows ~3x per layer; Adam lr 1e-3"

    def setup(self) -> None:
        self.data()
        self.model = cnn((32,) * 6, pool=False)
        for m in self.model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * 9
                nn.init.normal_(m.weight, std=3 * math.sqrt(2 / fan_in))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def before_training(self) -> None:
        x, _ = self.batches(0)
        self.ratio = depth_ratio(weighted_output_stds(self.model, lambda: self.model(x)))

    def prove(self, losses: list[float]) -> Proof:
        return at_least("std(last hidden conv out) / std(first) at init", self.ratio, 10)
