"""BatchNorm misuse: validation under no_grad() with the model left in training mode, and
batches too small for batch statistics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pathologies.case import Case, Proof, at_least, at_most, register
from pathologies.cases.activations import DigitsImageCase
from pathologies.cases.healthy_vision import HFImageCase
from pathologies.data import Batches, tabular
from pathologies.models import cnn, mlp, resnet
from pathologies.proofs import fewest_values_per_channel


class NoGradValidation:
    """Every 50 steps: ``with torch.no_grad(): validate`` but no ``model.eval()``."""

    category = "bn_train_in_eval"

    def validate_in_train_mode(self, step: int) -> None:
        if step % 50 == 49:
            self.validations = getattr(self, "validations", 0) + 1
            self.in_train_mode = getattr(self, "in_train_mode", 0) + self.model.training
            with torch.no_grad():
                self.validation = self.validation_loss()

    def train_step(self, step: int) -> torch.Tensor:
        loss = super().train_step(step)  # type: ignore[misc]
        self.validate_in_train_mode(step)
        return loss

    def prove(self, losses: list[float]) -> Proof:
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        share = self.in_train_mode / self.validations if has_bn else 0.0
        return at_least(
            "share of no_grad validations run with BatchNorm in training mode", share, 1.0
        )


@register
class BnNoGradCnn(NoGradValidation, DigitsImageCase):
    name = "bn_train_in_eval_cnn_no_grad_validation"
    arch = "CNN 2x(conv-BN-ReLU-pool)"
    summary = "SGD momentum lr 0.05; validation under torch.no_grad() without model.eval()"

    def setup(self) -> None:
        self.data()
        self.model = cnn((16, 32), batchnorm=True)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

    def validation_loss(self) -> torch.Tensor:
        return self.loss(10_000)


@register
class BnNoGradResnet(NoGradValidation, HFImageCase):
    name = "bn_train_in_eval_resnet_no_grad_validation"
    arch = "ResNet (transformers)"
    summary = "the healthy ResNet loop; validation under torch.no_grad() without model.eval()"
    size = 32
    steps = 250

    def setup(self) -> None:
        self.data()
        self.model = resnet()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

    def validation_loss(self) -> torch.Tensor:
        x, y = self.batches(10_000)
        return F.cross_entropy(self.model(pixel_values=x).logits, y)


def few_values(case: Case, call) -> Proof:
    was = case.model.training
    case.model.train()
    count = fewest_values_per_channel(case.model, call)
    case.model.train(was)
    return at_most("fewest values per channel in a BatchNorm's batch statistics", count, 7)


@register
class BnFewValuesMlp(Case):
    name = "bn_few_values_mlp_wine_batch_4"
    arch = "MLP 13-32-32-3 BatchNorm1d-ReLU"
    category = "bn_few_values"
    summary = "BatchNorm1d MLP on standardised wine with batches of 4, SGD momentum lr 0.01"

    def setup(self) -> None:
        x, y = tabular("wine")
        self.batches = Batches(x, y, batch_size=4)
        self.model = mlp((13, 32, 32, 3), norm=nn.BatchNorm1d)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss

    def prove(self, losses: list[float]) -> Proof:
        x = self.batches(0)[0]
        return few_values(self, lambda: self.model(x))


@register
class BnFewValuesResnet(HFImageCase):
    name = "bn_few_values_resnet_digits_8x8_batch_4"
    arch = "ResNet (transformers)"
    category = "bn_few_values"
    summary = (
        "ResNet on native 8x8 digits, batch 4: the last stage normalises 1x1 maps of 4 samples"
    )
    size = 8
    batch_size = 4

    def setup(self) -> None:
        self.data()
        self.model = resnet()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def prove(self, losses: list[float]) -> Proof:
        x = self.batches(0)[0]
        return few_values(self, lambda: self.model(pixel_values=x))
