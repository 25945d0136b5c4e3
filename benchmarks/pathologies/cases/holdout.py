"""Held-out cases: written after the monitor's thresholds were frozen, never used to tune
them, and scored apart (``split = "holdout"``). They pair the benchmark's faults with
architectures, optimisers and data the calibration cases do not use for that fault
(RMSprop, OneCycle, LayerNorm-GELU MLPs, 2-layer LSTMs, deeper ResNets, ViT and GPT-2 with
faults they are not calibrated on), so their scores estimate how the rules generalise."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pathologies.case import HOLDOUT, Case, Proof, at_least, at_most, register, untrained
from pathologies.cases.activations import DigitsImageCase
from pathologies.cases.batchnorm import NoGradValidation, few_values
from pathologies.cases.gradients import first_over_last
from pathologies.cases.healthy_text import CharCase, GPT2Case
from pathologies.cases.healthy_vision import DigitsCase, HFImageCase
from pathologies.cases.loop_bugs import EvalModeMixin, RawTabularCase, never_zeroed
from pathologies.cases.loss_spikes import spike
from pathologies.cases.nonfinite import first_bad_batch
from pathologies.data import Batches, digits, tabular
from pathologies.models import CharRNN, CharTransformer, cnn, gpt2, mlp, resnet, vit
from pathologies.proofs import (
    dead_share,
    saturated_share,
    smoothed,
    total_grad_norm,
    weight_grad_norms,
)
from pathologies.schedules import warmup_cosine


class Holdout(Case):
    split = HOLDOUT


class TabularStep(Holdout):
    """Cross-entropy on a tabular batch (``batches`` set by ``setup``)."""

    def loss(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        return F.cross_entropy(self.model(x), y)

    def train_step(self, step: int) -> torch.Tensor:
        loss = self.loss(step)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss


def linear_decay(optimizer: torch.optim.Optimizer, warmup: int, total: int):
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(total - warmup, 1))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- healthy -------------------------------------------------------------------------------


@register
class HoldoutGpt2LinearDecay(Holdout, GPT2Case):
    name = "holdout_healthy_gpt2_chars_3_layers_linear_decay"
    arch = "GPT-2 (transformers)"
    summary = "GPT-2 3 layers n_embd 96, AdamW lr 6e-4 wd 0.01, 20 warm-up + linear decay, no clip"

    def setup(self) -> None:
        self.data()
        self.model = gpt2(width=96, layers=3)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=6e-4, weight_decay=0.01)
        self.scheduler = linear_decay(self.optimizer, 20, self.steps)


@register
class HoldoutLstm2LayersSgd(Holdout, CharCase):
    name = "holdout_healthy_lstm_chars_2_layers_sgd_clip"
    arch = "nn.LSTM char model, 2 layers"
    summary = "Embedding-LSTM(128) x 2-Linear, plain SGD lr 1.0, clip 0.5 (Zaremba-style)"
    clip = 0.5

    def setup(self) -> None:
        self.data()
        self.model = CharRNN("lstm", layers=2)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1.0)


@register
class HoldoutTransformerRmsprop(Holdout, CharCase):
    name = "holdout_healthy_transformer_encoder_chars_rmsprop"
    arch = "nn.TransformerEncoder char model"
    summary = "causal pre-norm TransformerEncoder 2 layers width 64, RMSprop lr 5e-4, warm-up"

    def setup(self) -> None:
        self.data()
        self.model = CharTransformer()
        self.optimizer = torch.optim.RMSprop(self.model.parameters(), lr=5e-4)
        self.scheduler = warmup_cosine(self.optimizer, 30, self.steps)


@register
class HoldoutResnetAdamw(Holdout, HFImageCase):
    name = "holdout_healthy_resnet_digits_2x2_blocks_adamw"
    arch = "ResNet (transformers), 2 blocks per stage"
    summary = "digits 32x32, ResNet basic blocks [16, 32] x 2, AdamW lr 1e-3 wd 0.05"
    size = 32
    steps = 200

    def setup(self) -> None:
        self.data()
        self.model = resnet(depths=(2, 2))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.05)


@register
class HoldoutMlpLayerNormGelu(Holdout, DigitsCase):
    name = "holdout_healthy_mlp_digits_layernorm_gelu_adamw"
    arch = "MLP 64-256-256-10 LayerNorm-GELU"
    summary = "flattened digits, Linear-LayerNorm-GELU blocks, AdamW lr 3e-3 wd 0.01"

    def setup(self) -> None:
        x, y = digits()
        self.batches = Batches(x.flatten(1), y, batch_size=64)
        self.model = mlp((64, 256, 256, 10), activation=nn.GELU, norm=nn.LayerNorm)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=3e-3, weight_decay=0.01)


@register
class HoldoutCnnBnOneCycle(Holdout, DigitsCase):
    name = "holdout_healthy_cnn_bn_digits_onecycle_nesterov"
    arch = "CNN 3x(conv-BN-ReLU-pool)"
    summary = "digits 16x16, SGD Nesterov momentum 0.9 wd 5e-4, OneCycleLR max lr 0.1"
    size = 16

    def setup(self) -> None:
        self.data()
        self.model = cnn((16, 32, 64), batchnorm=True, size=16)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=0.1, total_steps=self.steps
        )

    def train_step(self, step: int) -> torch.Tensor:
        loss = super().train_step(step)
        self.scheduler.step()
        return loss


@register
class HoldoutGruAdamwClip(Holdout, CharCase):
    name = "holdout_healthy_gru_chars_2_layers_adamw_clip"
    arch = "nn.GRU char model, 2 layers"
    summary = "Embedding-GRU(128) x 2-Linear, AdamW lr 2e-3, clip 1.0"
    clip = 1.0

    def setup(self) -> None:
        self.data()
        self.model = CharRNN("gru", layers=2)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=2e-3)


# --- faults --------------------------------------------------------------------------------


@register
class HoldoutLrHighVit(Holdout, HFImageCase):
    name = "holdout_lr_high_vit_digits_adamw_lr_0_05"
    arch = "ViT (transformers)"
    category = "lr_too_high"
    summary = "the healthy ViT loop (warm-up + cosine) at lr 5e-2 = 50x; loss stays far above it"
    size = 16

    def setup(self) -> None:
        self.data()
        self.model = vit()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=5e-2, weight_decay=0.05)
        self.scheduler = warmup_cosine(self.optimizer, 30, self.steps)

    def prove(self, losses: list[float]) -> Proof:
        # chance is ln 10 = 2.30; the healthy ViT loop (lr 1e-3) ends at 0.15
        return at_least("mean loss of the last 50 steps", smoothed(losses, -50, None), 1.0)


@register
class HoldoutLrLowGpt2(Holdout, GPT2Case):
    name = "holdout_lr_low_gpt2_chars_adamw_1e-6"
    arch = "GPT-2 (transformers)"
    category = "lr_too_low"
    summary = "the healthy GPT-2 loop (warm-up, cosine, clip 1.0) at lr 1e-6 (sane: 1e-3)"
    clip = 1.0

    def setup(self) -> None:
        self.data()
        self.model = gpt2()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-6, weight_decay=0.1)
        self.scheduler = warmup_cosine(self.optimizer, 30, self.steps)

    def prove(self, losses: list[float]) -> Proof:
        return untrained(losses, 0.95)


@register
class HoldoutVanishingSigmoidBreastCancer(TabularStep):
    name = "holdout_vanishing_mlp_sigmoid_14_layers_breast_cancer"
    arch = "MLP 14 x Linear(128)-Sigmoid"
    category = "vanishing_gradients"
    summary = "standardised breast cancer, 14 sigmoid layers of width 128, SGD momentum lr 0.05"

    def setup(self) -> None:
        x, y = tabular("breast_cancer")
        self.batches = Batches(x, y, batch_size=32)
        self.model = mlp((30,) + (128,) * 13 + (2,), activation=nn.Sigmoid)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

    def before_training(self) -> None:
        self.norms = weight_grad_norms(self.model, lambda: self.loss(0))

    def prove(self, losses: list[float]) -> Proof:
        return at_most(
            "first/last layer weight-gradient norm at init", first_over_last(self.norms), 1e-4
        )


@register
class HoldoutExplodingCnn(Holdout, DigitsImageCase):
    name = "holdout_exploding_cnn_relu_large_init_8_layers"
    arch = "CNN 8 x conv3x3(32)-ReLU"
    category = "exploding_gradients"
    also_root = ("ACT_STD_DEPTH",)  # the planted cause is the large init, which this names
    summary = "8 conv-ReLU layers, weights N(0, (2.5 x Kaiming std)^2), no norm, SGD lr 1e-3"
    steps = 200

    def setup(self) -> None:
        self.data()
        self.model = cnn((32,) * 8, pool=False)
        for m in self.model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, std=2.5 * math.sqrt(2 / fan_in))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)

    def before_training(self) -> None:
        self.norm = total_grad_norm(self.model, lambda: self.loss(0))

    def prove(self, losses: list[float]) -> Proof:
        return at_least("total gradient L2 norm at init", self.norm, 1e3)


@register
class HoldoutSaturatedSigmoidWine(TabularStep):
    name = "holdout_saturated_mlp_sigmoid_wine_unit_normal_init"
    arch = "MLP 13-128-128-3 Sigmoid"
    category = "saturated_activations"
    summary = "standardised wine, sigmoid MLP with N(0, 1) weights, Adam lr 1e-3"

    def setup(self) -> None:
        x, y = tabular("wine")
        self.batches = Batches(x, y, batch_size=16)
        self.model = mlp((13, 128, 128, 3), activation=nn.Sigmoid)
        for m in self.model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=1.0)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def prove(self, losses: list[float]) -> Proof:
        x, _ = self.batches(0)
        # the diagnosis names a layer, so the proof is per layer: 13 standardised inputs give
        # the first layer pre-activations of std ~3.6, the 128-wide second ~6
        share = saturated_share(self.model, lambda: self.model(x), worst=True)
        return at_least("share of |2 sigmoid - 1| > 0.97 in the worst layer, after training",
                        share, 0.5)  # fmt: skip


@register
class HoldoutDeadReluCnnBias(Holdout, DigitsImageCase):
    name = "holdout_dead_relu_cnn_negative_conv_bias"
    arch = "CNN 2x(conv-ReLU-pool)"
    category = "dead_relu"
    summary = "digits, conv biases initialised to -3 (a 'sparse init' gone wrong), Adam lr 1e-3"

    def setup(self) -> None:
        self.data()
        self.model = cnn((16, 32))
        for m in self.model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.constant_(m.bias, -3.0)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def prove(self, losses: list[float]) -> Proof:
        x, _ = self.batches(0)
        return at_least(
            "share of ReLU units zero on a whole batch, after training",
            dead_share(self.model, lambda: self.model(x)),
            0.5,
        )


@register
class HoldoutNanPixelVit(Holdout, HFImageCase):
    name = "holdout_nonfinite_input_vit_digits_nan_pixel"
    arch = "ViT (transformers)"
    category = "nonfinite_input"
    summary = "one digit image with a NaN pixel (a failed resize), ViT, AdamW lr 1e-3"
    size = 16

    def setup(self) -> None:
        x, y = digits(16)
        x = x.clone()
        x[700, 0, 5, 9] = float("nan")
        self.batches = Batches(x, y, batch_size=64)
        self.model = vit()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    def prove(self, losses: list[float]) -> Proof:
        step = first_bad_batch(self.batches, self.steps)
        return Proof(
            "first step fed a NaN input", float(step), "a NaN in the data (>= 0)", step >= 0
        )


class SqrtFeatures(nn.Module):
    """A user's 'compress the dynamic range' layer: sqrt(x) (NaN for x < 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)


@register
class HoldoutNanForwardCnnSqrt(Holdout, DigitsImageCase):
    name = "holdout_nonfinite_forward_cnn_sqrt_of_standardised_pixels"
    arch = "CNN with a sqrt input layer"
    category = "nonfinite_forward"
    root = "NONFINITE_FORWARD"
    summary = "sqrt(x) inside the model on standardised (partly negative) pixels: NaN"

    def setup(self) -> None:
        self.data()
        self.model = nn.Sequential(SqrtFeatures(), cnn((16, 32)))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def prove(self, losses: list[float]) -> Proof:
        x, _ = self.batches(0)
        with torch.no_grad():
            bad = (~torch.isfinite(self.model[0](x))).float().mean()
        ok = bool(torch.isfinite(x).all()) and float(bad) > 0
        return Proof("share of NaN out of the sqrt layer (finite input)", float(bad), "> 0", ok)


@register
class HoldoutUnscaledLayerNormSgd(Holdout, RawTabularCase):
    name = "holdout_unscaled_mlp_breast_cancer_layernorm_sgd"
    arch = "MLP 30-64-64-2 LayerNorm-ReLU"
    summary = "raw breast-cancer measurements into a LayerNorm MLP, SGD momentum lr 0.01"

    def setup(self) -> None:
        self.data()
        self.model = mlp((30, 64, 64, 2), norm=nn.LayerNorm)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)


@register
class HoldoutNoZeroGradLstm(Holdout, CharCase):
    name = "holdout_no_zero_grad_lstm_chars_adam"
    arch = "nn.LSTM char model"
    category = "grad_not_zeroed"
    summary = "Embedding-LSTM(128)-Linear, Adam lr 2e-3, clip 1.0; zero_grad() never called"
    clip = 1.0
    steps = 200

    def setup(self) -> None:
        self.data()
        self.model = CharRNN("lstm")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=2e-3)

    def loss(self, step: int) -> torch.Tensor:
        ids, targets = self.windows(step)
        logits = self.model(ids)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def train_step(self, step: int) -> torch.Tensor:
        loss = self.loss(step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        return loss

    def prove(self, losses: list[float]) -> Proof:
        # clip_grad_norm_ rescales the accumulated .grad in place to norm <= 1 every step, so
        # the sum cannot grow 10x as in the unclipped cases; a zeroing loop gives exactly 1
        return never_zeroed(self, lambda: self.loss(self.steps - 1), bar=3)


@register
class HoldoutEvalModeVit(EvalModeMixin, Holdout, HFImageCase):
    name = "holdout_eval_mode_vit_digits_dropout"
    arch = "ViT (transformers), dropout 0.1"
    summary = "ViT with dropout 0.1, AdamW lr 1e-3; model.eval() at step 60, never undone"
    size = 16
    validate_at = 60

    def setup(self) -> None:
        self.data()
        self.model = vit(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    def validation_loss(self) -> torch.Tensor:
        x, y = self.batches(10_000)
        return F.cross_entropy(self.model(pixel_values=x).logits, y)


@register
class HoldoutSoftmaxGpt2(Holdout, GPT2Case):
    name = "holdout_softmax_gpt2_chars_cross_entropy"
    arch = "GPT-2 (transformers) + softmax"
    category = "loss_on_probabilities"
    summary = "F.cross_entropy(logits.softmax(-1), targets): probabilities where logits belong"
    steps = 200

    def setup(self) -> None:
        self.data()
        self.model = gpt2()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits.softmax(-1)

    def prove(self, losses: list[float]) -> Proof:
        ids, _ = self.windows(0)
        with torch.no_grad():
            out = self.logits(ids)
        rows = out.reshape(-1, out.shape[-1])
        inside = ((rows >= 0) & (rows <= 1)).all(dim=1) & ((rows.sum(1) - 1).abs() < 1e-4)
        return at_least("share of rows fed to the loss that are softmax probabilities",
                        float(inside.float().mean()), 0.999)  # fmt: skip


@register
class HoldoutBnNoGradMlp(NoGradValidation, TabularStep):
    name = "holdout_bn_train_in_eval_mlp_breast_cancer_no_grad_validation"
    arch = "MLP 30-64-64-2 BatchNorm1d-ReLU"
    summary = "Adam lr 1e-3; validation under torch.no_grad() without model.eval()"

    def setup(self) -> None:
        x, y = tabular("breast_cancer")
        self.batches = Batches(x, y, batch_size=32)
        self.model = mlp((30, 64, 64, 2), norm=nn.BatchNorm1d)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def validation_loss(self) -> torch.Tensor:
        return self.loss(10_000)


@register
class HoldoutBnFewValuesCnn(Holdout, DigitsImageCase):
    name = "holdout_bn_few_values_cnn_digits_batch_1"
    arch = "CNN 3x(conv-BN-ReLU-pool)"
    category = "bn_few_values"
    summary = "a BatchNorm CNN fine-tuned one image at a time: the last BN sees 2x2 = 4 values"
    steps = 200

    def setup(self) -> None:
        x, y = digits()
        self.batches = Batches(x, y, batch_size=1)
        self.model = cnn((16, 32, 64), batchnorm=True)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def prove(self, losses: list[float]) -> Proof:
        x = self.batches(0)[0]
        return few_values(self, lambda: self.model(x))


@register
class HoldoutSpikeResnet(Holdout, HFImageCase):
    name = "holdout_loss_spike_resnet_digits_shuffled_labels_at_150"
    arch = "ResNet (transformers)"
    category = "loss_spike"
    summary = "the healthy ResNet loop; the labels of the step-150 batch are shuffled"
    size = 32
    steps = 220
    corrupt_at = 150

    def setup(self) -> None:
        self.data()
        self.model = resnet()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

    def train_step(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        if step == self.corrupt_at:
            y = y[torch.randperm(y.numel(), generator=torch.Generator().manual_seed(1))]
        loss = F.cross_entropy(self.model(pixel_values=x).logits, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss

    def prove(self, losses: list[float]) -> Proof:
        return spike(losses, self.corrupt_at)
