"""float16 autocast with torch.amp.GradScaler on CPU where most steps are skipped: raw
features in the thousands overflow float16 once the first updates have grown the weights,
and every later step finds Inf gradients and is skipped."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pathologies.case import Case, Proof, at_least, register
from pathologies.data import Batches, tabular
from pathologies.models import mlp


class Float16Case(Case):
    category = "amp_steps_skipped"

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
