"""Healthy image classifiers on digits: a CNN (Adam, BatchNorm + SGD with a proper
evaluation phase, gradient accumulation, bf16 autocast) and transformers' ResNet, ConvNeXt
and ViT (digits upsampled)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pathologies.case import Case, register
from pathologies.data import Batches, digits
from pathologies.models import cnn, convnext, resnet, vit
from pathologies.schedules import warmup_cosine


class DigitsCase(Case):
    """Shared data for the digit cases: ``size`` x ``size`` images, ``batch_size``."""

    size = 8
    batch_size = 64

    def data(self) -> None:
        x, y = digits(self.size)
        self.batches = Batches(x, y, batch_size=self.batch_size)

    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss


@register
class CnnDigitsAdam(DigitsCase):
    name = "healthy_cnn_digits_adam"
    arch = "CNN 2x(conv-ReLU-pool)"
    summary = "digits 8x8, Adam lr 1e-3, batch 64"

    def setup(self) -> None:
        self.data()
        self.model = cnn((16, 32))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)


@register
class CnnBnDigitsSgdEval(DigitsCase):
    name = "healthy_cnn_bn_digits_sgd_eval"
    arch = "CNN 2x(conv-BN-ReLU-pool)"
    summary = "digits 16x16, SGD momentum 0.9 lr 0.05; eval()/no_grad()/train() every 50 steps"
    size = 16

    def setup(self) -> None:
        self.data()
        self.model = cnn((16, 32), batchnorm=True, size=16)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.x_val, self.y_val = self.batches(10_000)  # a held-out-style batch

    def train_step(self, step: int) -> torch.Tensor:
        loss = super().train_step(step)
        if step % 50 == 49:
            self.model.eval()
            with torch.no_grad():
                self.val_accuracy = (self.model(self.x_val).argmax(1) == self.y_val).float().mean()
            self.model.train()
        return loss


@register
class CnnDigitsAccumulation(DigitsCase):
    name = "healthy_cnn_digits_grad_accumulation"
    arch = "CNN 2x(conv-ReLU-pool)"
    summary = "digits 8x8, Adam lr 1e-3, 4 micro-batches of 16 per optimiser step"

    def setup(self) -> None:
        self.data()
        self.model = cnn((16, 32))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        self.optimizer.zero_grad()
        total = torch.zeros(())
        for xm, ym in zip(x.chunk(4), y.chunk(4)):
            loss = F.cross_entropy(self.model(xm), ym) / 4
            loss.backward()
            total += loss.detach()
        self.optimizer.step()
        return total


@register
class CnnDigitsBf16(DigitsCase):
    name = "healthy_cnn_digits_bf16_autocast"
    arch = "CNN 2x(conv-ReLU-pool)"
    summary = "digits 16x16, AdamW lr 1e-3, forward under torch.autocast('cpu', bfloat16)"
    size = 16

    def setup(self) -> None:
        self.data()
        self.model = cnn((16, 32), size=16)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss


class HFImageCase(DigitsCase):
    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        loss = F.cross_entropy(self.model(pixel_values=x).logits, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if getattr(self, "scheduler", None) is not None:
            self.scheduler.step()
        return loss


@register
class ResnetDigitsSgd(HFImageCase):
    name = "healthy_resnet_digits_sgd"
    arch = "ResNet (transformers)"
    summary = "digits 32x32, ResNet basic blocks [16, 32], SGD momentum 0.9 lr 0.05"
    size = 32
    steps = 250

    def setup(self) -> None:
        self.data()
        self.model = resnet()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)


@register
class ConvnextDigitsAdamw(HFImageCase):
    name = "healthy_convnext_digits_adamw_warmup"
    arch = "ConvNeXt (transformers)"
    summary = "digits 32x32, ConvNeXt [16, 32], AdamW lr 1e-3 wd 0.05, 30 warm-up + cosine"
    size = 32
    steps = 250

    def setup(self) -> None:
        self.data()
        self.model = convnext()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.05)
        self.scheduler = warmup_cosine(self.optimizer, 30, self.steps)


@register
class VitDigitsAdamw(HFImageCase):
    name = "healthy_vit_digits_adamw_warmup"
    arch = "ViT (transformers)"
    summary = "digits 16x16, ViT patch 4 width 64 2 layers, AdamW lr 1e-3, warm-up + cosine"
    size = 16
    steps = 300

    def setup(self) -> None:
        self.data()
        self.model = vit()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.05)
        self.scheduler = warmup_cosine(self.optimizer, 30, self.steps)
