"""Learning rates far too high (with and without NaN) and far too low (frozen training)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pathologies.case import Case, Proof, at_least, first_nonfinite, register, untrained
from pathologies.cases.healthy_text import CharCase, GPT2Case
from pathologies.cases.healthy_vision import DigitsCase, HFImageCase
from pathologies.data import Batches, tabular
from pathologies.models import CharRNN, cnn, gpt2, mlp, vit
from pathologies.proofs import smoothed
from pathologies.schedules import warmup_cosine


def nan_at(losses: list[float]) -> Proof:
    step = first_nonfinite(losses)
    return Proof("first NaN/Inf loss at step", float(step), "a NaN/Inf loss (>= 0)", step >= 0)


class TabularCase(Case):
    dataset = "breast_cancer"
    batch_size = 32

    def data(self, standardise: bool = True) -> None:
        x, y = tabular(self.dataset, standardise)
        self.batches = Batches(x, y, batch_size=self.batch_size)

    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss


@register
class LrHighMlpSgdNan(TabularCase):
    name = "lr_high_mlp_breast_cancer_sgd_nan"
    arch = "MLP 30-64-64-2 ReLU"
    category = "lr_too_high"
    summary = "SGD momentum 0.9 at lr 5 (sane: 0.01-0.1); the run turns NaN"

    def setup(self) -> None:
        self.data()
        self.model = mlp((30, 64, 64, 2))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=5.0, momentum=0.9)

    def prove(self, losses: list[float]) -> Proof:
        return nan_at(losses)


@register
class LrHighCnnAdam(DigitsCase):
    name = "lr_high_cnn_digits_adam"
    arch = "CNN 2x(conv-ReLU-pool)"
    category = "lr_too_high"
    summary = "Adam at lr 0.5 (500x the usual 1e-3); loss stuck near chance, no NaN"

    def setup(self) -> None:
        self.data()
        self.model = cnn((16, 32))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.5)

    def prove(self, losses: list[float]) -> Proof:
        # the same loop at lr 1e-3 ends near 0.08 (healthy_cnn_digits_adam); chance is 2.30
        return at_least(
            "mean loss of the last 50 steps (lr 1e-3: ~0.08)", smoothed(losses, -50, None), 1.5
        )


@register
class LrHighGpt2Adamw(GPT2Case):
    name = "lr_high_gpt2_chars_adamw_50x"
    arch = "GPT-2 (transformers)"
    category = "lr_too_high"
    summary = "the healthy GPT-2 loop (warm-up, cosine, clip 1.0) at lr 5e-2 = 50x"
    clip = 1.0

    def setup(self) -> None:
        self.data()
        self.model = gpt2()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=5e-2, weight_decay=0.1)
        self.scheduler = warmup_cosine(self.optimizer, 30, self.steps)

    def prove(self, losses: list[float]) -> Proof:
        # the same loop at lr 1e-3 ends near 2.45 (healthy_gpt2_chars_adamw_warmup)
        return at_least(
            "mean loss of the last 50 steps (lr 1e-3: ~2.45)", smoothed(losses, -50, None), 2.65
        )


@register
class LrHighLstmSgd(CharCase):
    name = "lr_high_lstm_chars_sgd"
    arch = "nn.LSTM char model"
    category = "lr_too_high"
    summary = "SGD momentum 0.9 at lr 20 without clipping (sane: 0.1-1 with clipping)"

    def setup(self) -> None:
        self.data()
        self.model = CharRNN("lstm")
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=20.0, momentum=0.9)

    def prove(self, losses: list[float]) -> Proof:
        step = first_nonfinite(losses)
        if step >= 0:
            return nan_at(losses)
        return at_least(
            "mean loss of the last 50 steps / ln(96)",
            smoothed(losses, -50, None) / math.log(96),
            0.9,
        )


@register
class LrLowMlpWineSgd(TabularCase):
    name = "lr_low_mlp_wine_sgd"
    arch = "MLP 13-32-32-3 Tanh"
    category = "lr_too_low"
    summary = "SGD at lr 1e-5 (sane: 0.01-0.1): the weights barely move"
    dataset = "wine"
    batch_size = 16

    def setup(self) -> None:
        self.data()
        self.model = mlp((13, 32, 32, 3), activation=torch.nn.Tanh)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-5)

    def prove(self, losses: list[float]) -> Proof:
        return untrained(losses, 0.97, window=10)


@register
class LrLowLstmAdam(CharCase):
    name = "lr_low_lstm_chars_adam"
    arch = "nn.LSTM char model"
    category = "lr_too_low"
    summary = "Adam at lr 1e-7 (sane: 1e-3)"

    def setup(self) -> None:
        self.data()
        self.model = CharRNN("lstm")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-7)

    def prove(self, losses: list[float]) -> Proof:
        return untrained(losses, 0.98)


@register
class LrLowVitAdamw(HFImageCase):
    name = "lr_low_vit_digits_adamw"
    arch = "ViT (transformers)"
    category = "lr_too_low"
    summary = "the healthy ViT loop at lr 1e-6 (sane: 1e-3)"
    size = 16

    def setup(self) -> None:
        self.data()
        self.model = vit()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-6, weight_decay=0.05)
        self.scheduler = warmup_cosine(self.optimizer, 30, self.steps)

    def prove(self, losses: list[float]) -> Proof:
        return untrained(losses, 0.95)
