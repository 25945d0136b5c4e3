"""Bugs in the training loop itself: unscaled inputs, no ``zero_grad``, a model that ends in
Softmax/Sigmoid fed to a loss that expects logits, training left in ``eval()`` mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pathologies.case import Case, Proof, at_least, register
from pathologies.cases.activations import DigitsImageCase
from pathologies.cases.gradients import FlatDigitsCase
from pathologies.cases.healthy_text import GPT2Case
from pathologies.cases.healthy_vision import HFImageCase
from pathologies.data import Batches, tabular
from pathologies.models import cnn, gpt2, mlp, resnet
from pathologies.proofs import accumulated_over_fresh, probability_rows


class RawTabularCase(Case):
    """Tabular features as loaded (no standardisation), batch 32, Adam lr 1e-3."""

    dataset = "breast_cancer"
    category = "unscaled_inputs"

    def data(self) -> None:
        x, y = tabular(self.dataset, standardise=False)
        self.x_all = x
        self.batches = Batches(x, y, batch_size=32)

    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss

    def prove(self, losses: list[float]) -> Proof:
        spread = self.x_all.std(dim=0)
        figure = f"largest |input feature| (feature stds {float(spread.min()):.2g}..{float(spread.max()):.3g})"
        return at_least(figure, float(self.x_all.abs().max()), 1000)


@register
class UnscaledMlpBreastCancer(RawTabularCase):
    name = "unscaled_mlp_breast_cancer_raw_features"
    arch = "MLP 30-64-64-2 ReLU"
    summary = "raw breast-cancer measurements (area up to 4254) into an MLP, Adam lr 1e-3"

    def setup(self) -> None:
        self.data()
        self.model = mlp((30, 64, 64, 2))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)


@register
class UnscaledMlpWine(RawTabularCase):
    name = "unscaled_mlp_wine_raw_features"
    arch = "MLP 13-32-32-3 Tanh"
    summary = "raw wine measurements (proline up to 1680) into a tanh MLP, Adam lr 1e-3"
    dataset = "wine"

    def setup(self) -> None:
        self.data()
        self.batches = Batches(*tabular("wine", standardise=False), batch_size=16)
        self.model = mlp((13, 32, 32, 3), activation=nn.Tanh)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)


@register
class UnscaledConv1dBreastCancer(RawTabularCase):
    name = "unscaled_conv1d_breast_cancer_raw_features"
    arch = "1-D CNN 2x(conv1d-ReLU)"
    summary = (
        "raw breast-cancer measurements read as a 30-step signal by a Conv1d net, Adam lr 1e-3"
    )

    def setup(self) -> None:
        self.data()
        self.model = nn.Sequential(
            nn.Unflatten(1, (1, 30)),
            nn.Conv1d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(16, 16, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 30, 2),
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)


def never_zeroed(case: Case, loss_fn, bar: float = 10) -> Proof:
    """A loop that zeroes its gradients ends with ratio 1 (.grad is the last fresh one)."""
    ratio = accumulated_over_fresh(case.model, loss_fn)
    return at_least("||.grad at the end|| / ||one fresh gradient||", ratio, bar)


@register
class NoZeroGradMlp(FlatDigitsCase):
    name = "no_zero_grad_mlp_digits_adam"
    arch = "MLP 64-128-128-10 ReLU"
    category = "grad_not_zeroed"
    summary = "Adam lr 1e-3; the loop never calls optimizer.zero_grad()"

    def setup(self) -> None:
        self.data()
        self.model = mlp((64, 128, 128, 10))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def train_step(self, step: int) -> torch.Tensor:
        loss = self.loss(step)
        loss.backward()
        self.optimizer.step()
        return loss

    def prove(self, losses: list[float]) -> Proof:
        return never_zeroed(self, lambda: self.loss(self.steps - 1))


@register
class NoZeroGradCnn(DigitsImageCase):
    name = "no_zero_grad_cnn_digits_sgd"
    arch = "CNN 2x(conv-ReLU-pool)"
    category = "grad_not_zeroed"
    summary = "SGD momentum 0.9 lr 0.01; the loop never calls optimizer.zero_grad()"

    def setup(self) -> None:
        self.data()
        self.model = cnn((16, 32))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    train_step = NoZeroGradMlp.train_step
    prove = NoZeroGradMlp.prove


@register
class NoZeroGradGpt2(GPT2Case):
    name = "no_zero_grad_gpt2_chars_adamw"
    arch = "GPT-2 (transformers)"
    category = "grad_not_zeroed"
    summary = "AdamW lr 1e-3; model.zero_grad() was dropped in a refactor"
    steps = 200

    def setup(self) -> None:
        self.data()
        self.model = gpt2()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.1)

    def loss(self, step: int) -> torch.Tensor:
        ids, targets = self.windows(step)
        logits = self.model(input_ids=ids).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def train_step(self, step: int) -> torch.Tensor:
        loss = self.loss(step)
        loss.backward()
        self.optimizer.step()
        return loss

    prove = NoZeroGradMlp.prove


class ProbabilitiesCase(Case):
    category = "loss_on_probabilities"
    softmax = True

    def prove(self, losses: list[float]) -> Proof:
        x, _ = self.batches(0)
        with torch.no_grad():
            out = self.model(x)
        kind = "softmax" if self.softmax else "sigmoid"
        return at_least(
            f"share of output rows that are {kind} probabilities",
            probability_rows(out, self.softmax),
            0.999,
        )


@register
class SoftmaxMlp(ProbabilitiesCase, FlatDigitsCase):
    name = "softmax_mlp_digits_cross_entropy"
    arch = "MLP 64-128-10 ReLU + Softmax"
    summary = (
        "the model ends in nn.Softmax(dim=1) and its output goes to F.cross_entropy; Adam lr 1e-3"
    )

    def setup(self) -> None:
        self.data()
        self.model = mlp((64, 128, 10), final=nn.Softmax(dim=1))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)


@register
class SoftmaxCnn(ProbabilitiesCase, DigitsImageCase):
    name = "softmax_cnn_digits_cross_entropy"
    arch = "CNN 2x(conv-ReLU-pool) + Softmax"
    summary = "the CNN ends in nn.Softmax(dim=1), fed to nn.CrossEntropyLoss; SGD momentum lr 0.05"

    def setup(self) -> None:
        self.data()
        self.model = cnn((16, 32), final=nn.Softmax(dim=1))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)


@register
class SigmoidMlpBce(ProbabilitiesCase):
    name = "sigmoid_mlp_breast_cancer_bce_with_logits"
    arch = "MLP 30-64-1 ReLU + Sigmoid"
    summary = "the model ends in nn.Sigmoid and feeds nn.BCEWithLogitsLoss; Adam lr 1e-3"
    softmax = False

    def setup(self) -> None:
        x, y = tabular("breast_cancer")
        self.batches = Batches(x, y.float()[:, None], batch_size=32)
        self.model = mlp((30, 64, 1), final=nn.Sigmoid())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.criterion = nn.BCEWithLogitsLoss()

    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        loss = self.criterion(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss


class EvalModeMixin:
    """Validation at ``validate_at`` calls model.eval() and never model.train() again."""

    category = "step_in_eval_mode"
    validate_at = 50

    def validate_then_forget(self, step: int) -> None:
        self.steps_in_eval = getattr(self, "steps_in_eval", 0) + (not self.model.training)
        if step == self.validate_at:
            self.model.eval()
            with torch.no_grad():
                self.validation = self.validation_loss()

    def train_step(self, step: int) -> torch.Tensor:
        self.validate_then_forget(step)
        return super().train_step(step)  # type: ignore[misc]

    def prove(self, losses: list[float]) -> Proof:
        kinds = (nn.Dropout, nn.modules.batchnorm._BatchNorm)
        mode_dependent = [m for m in self.model.modules() if isinstance(m, kinds)]
        share = self.steps_in_eval / self.steps if mode_dependent else 0.0
        figure = f"share of optimiser steps run in eval mode ({len(mode_dependent)} BatchNorm/Dropout layers)"
        return at_least(figure, share, 0.5)


@register
class EvalModeCnn(EvalModeMixin, DigitsImageCase):
    name = "eval_mode_cnn_bn_dropout_digits"
    arch = "CNN 2x(conv-BN-ReLU-pool) + Dropout"
    summary = (
        "SGD momentum lr 0.05; model.eval() for a validation at step 50, model.train() forgotten"
    )

    def setup(self) -> None:
        self.data()
        layers = list(cnn((16, 32), batchnorm=True))
        self.model = nn.Sequential(*layers[:-1], nn.Dropout(0.3), layers[-1])
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

    def validation_loss(self) -> torch.Tensor:
        return self.loss(10_000)


@register
class EvalModeResnet(EvalModeMixin, HFImageCase):
    name = "eval_mode_resnet_digits"
    arch = "ResNet (transformers)"
    summary = "the healthy ResNet loop; model.eval() at step 50 for validation, never undone"
    size = 32
    steps = 250

    def setup(self) -> None:
        self.data()
        self.model = resnet()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

    def validation_loss(self) -> torch.Tensor:
        x, y = self.batches(10_000)
        return F.cross_entropy(self.model(pixel_values=x).logits, y)


@register
class EvalModeGpt2(EvalModeMixin, GPT2Case):
    name = "eval_mode_gpt2_chars_dropout"
    arch = "GPT-2 (transformers)"
    summary = "the healthy GPT-2 loop (dropout 0.1); model.eval() for validation at step 100, never undone"
    clip = 1.0
    validate_at = 100

    def setup(self) -> None:
        self.data()
        self.model = gpt2()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.1)

    def validation_loss(self) -> torch.Tensor:
        ids, targets = self.windows(10_000)
        logits = self.model(input_ids=ids).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
