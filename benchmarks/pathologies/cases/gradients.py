"""Vanishing gradients (deep sigmoid/tanh stacks, small init) and exploding gradients (deep
ReLU nets with large init and no normalisation, an RNN with large recurrent weights)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pathologies.case import Case, Proof, at_least, at_most, register
from pathologies.cases.healthy_text import CharCase
from pathologies.data import Batches, digits
from pathologies.models import CharRNN, cnn, mlp
from pathologies.proofs import total_grad_norm, weight_grad_norms


class FlatDigitsCase(Case):
    """Digits flattened to 64 features, batch 64, cross-entropy."""

    def data(self) -> None:
        x, y = digits()
        self.batches = Batches(x.flatten(1), y, batch_size=64)

    def loss(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        return F.cross_entropy(self.model(x), y)

    def train_step(self, step: int) -> torch.Tensor:
        loss = self.loss(step)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss


def first_over_last(norms: list[float]) -> float:
    return norms[0] / norms[-1] if norms[-1] > 0 else math.inf


@register
class VanishingMlpSigmoid(FlatDigitsCase):
    name = "vanishing_mlp_sigmoid_12_layers"
    arch = "MLP 12 x Linear(64)-Sigmoid"
    category = "vanishing_gradients"
    summary = "12 sigmoid layers, torch default init, SGD momentum 0.9 lr 0.1"

    def setup(self) -> None:
        self.data()
        self.model = mlp((64,) * 12 + (10,), activation=nn.Sigmoid)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)

    def before_training(self) -> None:
        self.norms = weight_grad_norms(self.model, lambda: self.loss(0))

    def prove(self, losses: list[float]) -> Proof:
        return at_most(
            "first/last layer weight-gradient norm at init", first_over_last(self.norms), 1e-4
        )


@register
class VanishingMlpSigmoidAdam(VanishingMlpSigmoid):
    name = "vanishing_mlp_sigmoid_16_layers_adam"
    arch = "MLP 16 x Linear(64)-Sigmoid"
    summary = "16 sigmoid layers, torch default init, Adam lr 1e-3"

    def setup(self) -> None:
        self.data()
        self.model = mlp((64,) * 16 + (10,), activation=nn.Sigmoid)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def prove(self, losses: list[float]) -> Proof:
        return at_most(
            "first/last layer weight-gradient norm at init", first_over_last(self.norms), 1e-6
        )


@register
class VanishingCnnSigmoid(Case):
    name = "vanishing_cnn_sigmoid_8_layers"
    arch = "CNN 8 x conv3x3(16)-Sigmoid"
    category = "vanishing_gradients"
    also_root = ("ACT_SATURATED",)  # its sigmoids saturate: the mechanism of the vanishing
    summary = "8 sigmoid conv layers, torch default init, SGD momentum 0.9 lr 0.05"

    def setup(self) -> None:
        x, y = digits()
        self.batches = Batches(x, y, batch_size=64)
        self.model = cnn((16,) * 8, activation=nn.Sigmoid, pool=False)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

    def loss(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        return F.cross_entropy(self.model(x), y)

    train_step = FlatDigitsCase.train_step

    def before_training(self) -> None:
        self.norms = weight_grad_norms(self.model, lambda: self.loss(0))

    def prove(self, losses: list[float]) -> Proof:
        return at_most(
            "first/last layer weight-gradient norm at init", first_over_last(self.norms), 1e-4
        )


@register
class ExplodingMlpRelu(FlatDigitsCase):
    name = "exploding_mlp_relu_large_init"
    also_root = ("ACT_STD_DEPTH",)  # the planted cause is the large init, which this names
    arch = "MLP 10 x Linear(128)-ReLU"
    category = "exploding_gradients"
    summary = "10 ReLU layers, weights N(0, (2.5 x Kaiming std)^2), no normalisation, SGD lr 0.01"

    def setup(self) -> None:
        self.data()
        self.model = mlp((64,) + (128,) * 9 + (10,))
        for m in self.model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=2.5 * math.sqrt(2 / m.in_features))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def before_training(self) -> None:
        self.norm = total_grad_norm(self.model, lambda: self.loss(0))

    def prove(self, losses: list[float]) -> Proof:
        return at_least("total gradient L2 norm at init", self.norm, 1e3)


@register
class ExplodingRnnRelu(CharCase):
    name = "exploding_rnn_relu_recurrent_weights"
    arch = "nn.RNN (ReLU) char model"
    category = "exploding_gradients"
    summary = "ReLU RNN whose recurrent matrix is 2 x orthogonal (singular values 2), Adam lr 1e-3"

    def setup(self) -> None:
        self.data()
        self.model = CharRNN("rnn", nonlinearity="relu")
        nn.init.orthogonal_(self.model.rnn.weight_hh_l0, gain=2.0)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def loss(self, step: int) -> torch.Tensor:
        ids, targets = self.windows(step)
        logits = self.model(ids)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def before_training(self) -> None:
        self.norm = total_grad_norm(self.model, lambda: self.loss(0))

    def prove(self, losses: list[float]) -> Proof:
        return at_least("total gradient L2 norm at init", self.norm, 1e3)
