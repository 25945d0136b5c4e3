"""float16 autocast with torch.amp.GradScaler on CPU where most steps are skipped.

Two cases feed raw features in the thousands: they overflow float16 once the first updates
have grown the weights, and every later step finds Inf gradients and is skipped. There the
unstandardised input is the planted cause as much as the skipping, so ``INPUT_SCALE`` is an
equally correct root. A third case has standardised inputs and a GradScaler configured to
grow its scale 8x after every successful step: three of every four steps overflow and are
skipped, and nothing but the skipping is wrong."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pathologies.case import Case, Proof, at_least, register
from pathologies.data import Batches, digits, tabular
from pathologies.models import mlp


class Float16Case(Case):
    category = "amp_steps_skipped"
    also_root = ("INPUT_SCALE",)  # the raw features are what overflows (see the module doc)

    def data(self) -> None:
        x, y = tabular("breast_cancer", standardise=False)
        self.batches = Batches(x, y, batch_size=32)
        self.scaler = torch.amp.GradScaler("cpu")

    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss

    def before_training(self) -> None:
        self.taken = 0  # optimiser steps GradScaler let through (a plain torch hook)

        def count(optimizer, args, kwargs) -> None:
            self.taken += 1

        self.optimizer.register_step_post_hook(count)

    def prove(self, losses: list[float]) -> Proof:
        return at_least(
            "share of optimiser steps skipped by GradScaler", 1 - self.taken / self.steps, 0.5
        )


@register
class Fp16Mlp(Float16Case):
    name = "amp_fp16_mlp_breast_cancer_skipped_steps"
    arch = "MLP 30-256-256-2 ReLU"
    summary = "float16 autocast + GradScaler, raw breast-cancer features, SGD lr 0.01"

    def setup(self) -> None:
        self.data()
        self.model = mlp((30, 256, 256, 2))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)


@register
class Fp16Conv1d(Float16Case):
    name = "amp_fp16_conv1d_breast_cancer_skipped_steps"
    arch = "1-D CNN 2x(conv1d-ReLU)"
    summary = "float16 autocast + GradScaler, raw breast-cancer features as a signal, SGD lr 0.01"

    def setup(self) -> None:
        self.data()
        self.model = nn.Sequential(
            nn.Unflatten(1, (1, 30)),
            nn.Conv1d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 30, 2),
        )
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)


@register
class Fp16AggressiveScaler(Float16Case):
    name = "amp_fp16_mlp_digits_aggressive_scaler_growth"
    arch = "MLP 64-128-128-10 ReLU"
    summary = "float16 autocast, GradScaler(growth_factor=8, growth_interval=1), Adam lr 1e-3"
    also_root = ()  # the inputs are standardised: the scaler's settings are the only fault

    def setup(self) -> None:
        x, y = digits()
        self.batches = Batches(x.reshape(len(x), -1), y, batch_size=64)
        self.scaler = torch.amp.GradScaler("cpu", growth_factor=8.0, growth_interval=1)
        self.model = mlp((64, 128, 128, 10))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
