"""Tiny cases for tests/benchmarks/test_pathologies.py (loaded with --case-file; not part of
the benchmark): a healthy run, a fault, a fault that does not happen, and a crash."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pathologies.case import Case, Proof, register, trained
from pathologies.data import Batches, tabular
from pathologies.models import mlp


class TinyWine(Case):
    arch = "MLP 13-16-3 ReLU"
    steps = 60
    poison_at = -1

    def setup(self) -> None:
        x, y = tabular("wine")
        self.batches = Batches(x, y, batch_size=16)
        self.model = mlp((13, 16, 3))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-2)

    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        if step == self.poison_at:
            x = x.clone()
            x[0, 0] = float("nan")
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss


@register
class TinyHealthy(TinyWine):
    name = "tiny_healthy"


@register
class TinyNanInput(TinyWine):
    name = "tiny_fault_nan_input"
    category = "nonfinite_input"
    poison_at = 5

    def prove(self, losses: list[float]) -> Proof:
        step = next(i for i, v in enumerate(losses) if v != v)
        return Proof("first NaN loss at step", float(step), "== 5", step == 5)


@register
class TinyInvalid(TinyWine):
    name = "tiny_invalid"
    category = "lr_too_low"

    def prove(self, losses: list[float]) -> Proof:
        return trained(losses, ratio=1e-9)  # lr 1e-2 trains: the 'frozen' fault never happened


@register
class TinyCrash(TinyWine):
    name = "tiny_crash"
    category = "dead_relu"

    def train_step(self, step: int) -> torch.Tensor:
        if step == 3:
            raise RuntimeError("tiny_crash: deliberate failure at step 3")
        return super().train_step(step)
