"""NaN/Inf: in the input data, created by a layer in the forward pass (log of a negative,
0/0 in a custom normalisation), and in a hand-written loss (log(0))."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pathologies.case import Case, Proof, first_nonfinite, register
from pathologies.cases.healthy_vision import DigitsCase, HFImageCase
from pathologies.data import Batches, digits, tabular
from pathologies.models import cnn, mlp, vit


def first_bad_batch(batches: Batches, steps: int) -> int:
    """First step whose input batch holds a NaN/Inf (plain torch over the same batches)."""
    return next((s for s in range(steps) if not torch.isfinite(batches(s)[0]).all()), -1)


@register
class NanInputMlp(Case):
    name = "nonfinite_input_mlp_breast_cancer_missing_value"
    arch = "MLP 30-64-64-2 ReLU"
    category = "nonfinite_input"
    summary = "one missing measurement stored as NaN in sample 123; Adam lr 1e-3"

    def setup(self) -> None:
        x, y = tabular("breast_cancer")
        x = x.clone()
        x[123, 7] = float("nan")
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

    def prove(self, losses: list[float]) -> Proof:
        step = first_bad_batch(self.batches, self.steps)
        return Proof(
            "first step fed a NaN input", float(step), "a NaN in the data (>= 0)", step >= 0
        )


@register
class InfInputCnn(DigitsCase):
    name = "nonfinite_input_cnn_digits_corrupt_image"
    arch = "CNN 2x(conv-ReLU-pool)"
    category = "nonfinite_input"
    summary = "one image divided by a zero contrast in preprocessing (Inf pixels); Adam lr 1e-3"

    def setup(self) -> None:
        x, y = digits()
        x = x.clone()
        x[1000] = x[1000] / 0.0
        self.batches = Batches(x, y, batch_size=64)
        self.model = cnn((16, 32))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def prove(self, losses: list[float]) -> Proof:
        step = first_bad_batch(self.batches, self.steps)
        return Proof(
            "first step fed an Inf/NaN input",
            float(step),
            "a NaN/Inf in the data (>= 0)",
            step >= 0,
        )


class LogFeatures(nn.Module):
    """A user's 'log-transform the features' layer: log(x) (NaN for x < 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x + 1.0)


@register
class NanForwardMlpLog(Case):
    name = "nonfinite_forward_mlp_log_of_negative"
    arch = "MLP with a log(x + 1) input layer"
    category = "nonfinite_forward"
    root = "NONFINITE_FORWARD"
    summary = "log(x + 1) inside the model on standardised features (x < -1 exists): NaN"

    def setup(self) -> None:
        x, y = tabular("breast_cancer")
        self.batches = Batches(x, y, batch_size=32)
        self.model = nn.Sequential(LogFeatures(), mlp((30, 64, 64, 2)))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    train_step = NanInputMlp.train_step

    def prove(self, losses: list[float]) -> Proof:
        x, _ = self.batches(0)
        with torch.no_grad():
            bad = (~torch.isfinite(self.model[0](x))).float().mean()
        ok = bool(torch.isfinite(x).all()) and float(bad) > 0
        return Proof("share of NaN in the log layer's output (finite input)", float(bad), "> 0", ok)


class PatchStandardize(nn.Module):
    """A user's per-patch contrast normalisation: (p - mean) / std per 2x2 patch (0/0 on
    blank patches)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = x.unfold(2, 2, 2).unfold(3, 2, 2)  # (N, C, h/2, w/2, 2, 2)
        mean = p.mean(dim=(-1, -2), keepdim=True)
        std = p.std(dim=(-1, -2), keepdim=True)
        p = (p - mean) / std
        return p.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


class NormalisedViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.normalise = PatchStandardize()
        self.vit = vit(image_size=8, patch=2)

    def forward(self, pixel_values: torch.Tensor):
        return self.vit(pixel_values=self.normalise(pixel_values))


@register
class NanForwardVitDivZero(HFImageCase):
    name = "nonfinite_forward_vit_patch_norm_div_zero"
    arch = "ViT (transformers) + custom patch normalisation"
    category = "nonfinite_forward"
    root = "NONFINITE_FORWARD"
    summary = "per-patch (p - mean) / std before a ViT (8x8, patch 2): blank patches give 0/0"
    size = 8

    def setup(self) -> None:
        self.data()
        self.model = NormalisedViT()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    def prove(self, losses: list[float]) -> Proof:
        x, _ = self.batches(0)
        with torch.no_grad():
            bad = (~torch.isfinite(self.model.normalise(x))).float().mean()
        ok = bool(torch.isfinite(x).all()) and float(bad) > 0
        return Proof(
            "share of NaN out of the patch normalisation (finite input)", float(bad), "> 0", ok
        )


@register
class NanLossManualBce(Case):
    name = "nonfinite_loss_mlp_handwritten_bce"
    arch = "MLP 30-64-64-1 ReLU"
    category = "nonfinite_forward"
    root = "NONFINITE_LOSS"
    summary = "BCE written by hand, -(y log p + (1-y) log(1-p)) with p = sigmoid(z): p hits 1.0, log(0); Adam lr 1e-2"

    def setup(self) -> None:
        x, y = tabular("breast_cancer")
        self.batches = Batches(x, y.float()[:, None], batch_size=32)
        self.model = mlp((30, 64, 64, 1))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-2)

    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        p = torch.sigmoid(self.model(x))
        loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss

    def prove(self, losses: list[float]) -> Proof:
        step = first_nonfinite(losses)
        return Proof("first NaN/Inf loss at step", float(step), "a NaN/Inf loss (>= 0)", step >= 0)
