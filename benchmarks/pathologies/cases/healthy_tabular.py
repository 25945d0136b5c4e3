"""Healthy MLPs on tabular data (breast cancer, wine): SGD, Adam, L-BFGS, clipping."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pathologies.case import Case, register
from pathologies.data import Batches, tabular
from pathologies.models import mlp


@register
class MlpBreastCancerAdam(Case):
    name = "healthy_mlp_breast_cancer_adam"
    arch = "MLP 30-64-64-2 ReLU"
    summary = "standardised breast cancer, Adam lr 1e-3, batch 32"
    steps = 300

    def setup(self) -> None:
        x, y = tabular("breast_cancer")
        self.batches = Batches(x, y, batch_size=32)
        self.model = mlp((30, 64, 64, 2))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss


@register
class MlpWineSgd(Case):
    name = "healthy_mlp_wine_sgd"
    arch = "MLP 13-32-32-3 Tanh"
    summary = "standardised wine, SGD momentum 0.9 lr 0.01, batch 16"
    steps = 300

    def setup(self) -> None:
        x, y = tabular("wine")
        self.batches = Batches(x, y, batch_size=16)
        self.model = mlp((13, 32, 32, 3), activation=nn.Tanh)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss


@register
class MlpBreastCancerLbfgs(Case):
    name = "healthy_mlp_breast_cancer_lbfgs"
    arch = "MLP 30-32-2 Tanh"
    summary = "standardised breast cancer, full batch, L-BFGS (strong Wolfe), L2 penalty 1e-3"
    steps = 100

    def setup(self) -> None:
        self.x, self.y = tabular("breast_cancer")
        self.model = mlp((30, 32, 2), activation=nn.Tanh)
        self.optimizer = torch.optim.LBFGS(
            self.model.parameters(), lr=1.0, max_iter=5, line_search_fn="strong_wolfe"
        )

    def train_step(self, step: int) -> torch.Tensor:
        def closure() -> torch.Tensor:
            self.optimizer.zero_grad()
            penalty = sum(p.pow(2).sum() for p in self.model.parameters())
            loss = F.cross_entropy(self.model(self.x), self.y) + 1e-3 * penalty
            loss.backward()
            return loss

        return self.optimizer.step(closure)


@register
class MlpBreastCancerClipSgd(Case):
    name = "healthy_mlp_breast_cancer_sgd_clip"
    arch = "MLP 30-128-64-2 ReLU"
    summary = "standardised breast cancer, SGD momentum 0.9 lr 0.05, clip_grad_norm_ 1.0"
    steps = 300

    def setup(self) -> None:
        x, y = tabular("breast_cancer")
        self.batches = Batches(x, y, batch_size=64)
        self.model = mlp((30, 128, 64, 2))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return loss
