"""The doctor's models, each in two configurations that differ in one lesson from the seeds.

Built from ``torch.nn`` layers and ``torch.nn.init`` only, so what the monitor reports is
about PyTorch's own behaviour:

- clinical MLP (breast cancer): naive N(0, 1) weights and no normalisation, against Kaiming
  init (std sqrt(2 / fan_in) for ReLU) with BatchNorm1d and ``bias=False`` before each norm.
- small CNN with BatchNorm2d (digits): torch's conventions (``bias=False``, momentum 0.1)
  against the Keras habit carried over by mistake (conv bias before the norm and
  momentum 0.99, which in PyTorch makes the running statistics follow the *last* batch).
- deep tanh MLP (digits, makemore part 3): N(0, 1) weights (tanh saturates), std
  1 / sqrt(fan_in) (no gain: the activations shrink layer by layer) and std (5/3) / sqrt(fan_in)
  (``calculate_gain('tanh')``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vitalstats.doctor.data import DatasetName

Family = Literal["mlp", "cnn", "tanh"]
FAMILIES: tuple[Family, ...] = ("mlp", "cnn", "tanh")
OptimizerName = Literal["adam", "sgd"]


@dataclass(frozen=True)
class Configuration:
    """One training run of the doctor: a model recipe plus how to train it."""

    family: Family
    name: str  # the run name in the store, e.g. "mlp/naive-init"
    lesson: str  # one line: what this configuration shows
    dataset: DatasetName
    build: Callable[[int, int], nn.Module]  # (num_features, num_classes) -> model
    optimizer: OptimizerName
    lr: float
    batch_size: int
    epochs: int


class SeedModel(nn.Module):
    """``self.net`` as in the seeds' ``ClinicalMLPWithBN``, so layers are named ``net.0``, ..."""

    def __init__(self, net: nn.Sequential):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# -- clinical MLP (seed 002's ClinicalMLP, binary output) ------------------------------------


def clinical_mlp_naive(num_features: int, num_classes: int) -> SeedModel:
    """30-64-32-1 ReLU MLP, every weight drawn from N(0, 1), biases zero, no normalisation."""
    model = nn.Sequential(
        nn.Linear(num_features, 64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 1 if num_classes == 2 else num_classes),
    )
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, mean=0.0, std=1.0)
            nn.init.zeros_(layer.bias)
    return SeedModel(model)


def clinical_mlp_kaiming_bn(num_features: int, num_classes: int) -> SeedModel:
    """Linear(bias=False) -> BatchNorm1d -> ReLU twice, Kaiming-normal weights, linear head."""
    model = nn.Sequential(
        nn.Linear(num_features, 64, bias=False),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Linear(64, 32, bias=False),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 1 if num_classes == 2 else num_classes),
    )
    for layer in (model[0], model[3]):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    nn.init.kaiming_normal_(model[6].weight, nonlinearity="linear")
    nn.init.zeros_(model[6].bias)
    return SeedModel(model)


# -- small CNN on 8x8 digits ----------------------------------------------------------------


def _digits_cnn(conv_bias: bool, momentum: float, num_classes: int) -> SeedModel:
    def block(in_channels: int, out_channels: int) -> list[nn.Module]:
        return [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=conv_bias),
            nn.BatchNorm2d(out_channels, momentum=momentum),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]

    return SeedModel(
        nn.Sequential(
            *block(1, 16),  # (N, 16, 4, 4)
            *block(16, 32),  # (N, 32, 2, 2)
            nn.Flatten(),
            nn.Linear(32 * 2 * 2, num_classes),
        )
    )


def digits_cnn_torch_conventions(num_features: int, num_classes: int) -> SeedModel:
    """Conv(bias=False) -> BatchNorm2d(momentum=0.1) -> ReLU -> MaxPool, twice; linear head."""
    return _digits_cnn(conv_bias=False, momentum=0.1, num_classes=num_classes)


def digits_cnn_keras_habits(num_features: int, num_classes: int) -> SeedModel:
    """The same CNN with a (wasted) conv bias before each norm and momentum=0.99."""
    return _digits_cnn(conv_bias=True, momentum=0.99, num_classes=num_classes)


# -- deep tanh MLP (makemore part 3) --------------------------------------------------------

TANH_WIDTH = 100
TANH_HIDDEN_LAYERS = 5


def _deep_tanh_mlp(
    weight_std: Callable[[int], float], num_features: int, num_classes: int
) -> SeedModel:
    """Flatten, five Linear(100) + Tanh layers with weights N(0, weight_std(fan_in)), zero
    biases, and a linear head with std 1 / sqrt(100)."""
    widths = [num_features] + [TANH_WIDTH] * TANH_HIDDEN_LAYERS
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in itertools.pairwise(widths):
        linear = nn.Linear(fan_in, fan_out)
        nn.init.normal_(linear.weight, mean=0.0, std=weight_std(fan_in))
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.Tanh()]
    head = nn.Linear(TANH_WIDTH, num_classes)
    nn.init.normal_(head.weight, mean=0.0, std=1.0 / TANH_WIDTH**0.5)
    nn.init.zeros_(head.bias)
    return SeedModel(nn.Sequential(*layers, head))


def deep_tanh_naive(num_features: int, num_classes: int) -> SeedModel:
    """Weights N(0, 1): pre-activations of std ~sqrt(fan_in) = 10, so tanh saturates."""
    return _deep_tanh_mlp(lambda fan_in: 1.0, num_features, num_classes)


def deep_tanh_without_gain(num_features: int, num_classes: int) -> SeedModel:
    """Weight std 1 / sqrt(fan_in): the signal shrinks with depth."""
    return _deep_tanh_mlp(lambda fan_in: 1.0 / fan_in**0.5, num_features, num_classes)


def deep_tanh_with_gain(num_features: int, num_classes: int) -> SeedModel:
    """Weight std (5/3) / sqrt(fan_in), torch's ``calculate_gain('tanh')``."""
    gain = nn.init.calculate_gain("tanh")
    return _deep_tanh_mlp(lambda fan_in: gain / fan_in**0.5, num_features, num_classes)


CONFIGURATIONS: tuple[Configuration, ...] = (
    Configuration(
        "mlp",
        "mlp/naive-init",
        "N(0, 1) weights, no normalisation: activations explode layer by layer",
        "breast_cancer",
        clinical_mlp_naive,
        "adam",
        1e-3,
        32,
        30,
    ),
    Configuration(
        "mlp",
        "mlp/kaiming-batchnorm",
        "Kaiming init + BatchNorm1d: unit-scale activations from the first step",
        "breast_cancer",
        clinical_mlp_kaiming_bn,
        "adam",
        1e-3,
        32,
        30,
    ),
    Configuration(
        "cnn",
        "cnn/torch-conventions",
        "BatchNorm2d with bias=False before it and PyTorch's momentum 0.1",
        "digits",
        digits_cnn_torch_conventions,
        "adam",
        3e-3,
        64,
        8,
    ),
    Configuration(
        "cnn",
        "cnn/keras-habits",
        "conv bias before BatchNorm (wasted) and momentum 0.99 (running stats = last batch)",
        "digits",
        digits_cnn_keras_habits,
        "adam",
        3e-3,
        64,
        8,
    ),
    Configuration(
        "tanh",
        "tanh/naive-init",
        "N(0, 1) weights: tanh outputs pile up at +-1 (saturated, gradients vanish)",
        "digits",
        deep_tanh_naive,
        "sgd",
        0.1,
        64,
        12,
    ),
    Configuration(
        "tanh",
        "tanh/no-gain",
        "weight std 1/sqrt(fan_in): tanh squashes the signal smaller at every layer",
        "digits",
        deep_tanh_without_gain,
        "sgd",
        0.1,
        64,
        12,
    ),
    Configuration(
        "tanh",
        "tanh/gain-5-3",
        "weight std (5/3)/sqrt(fan_in): the tanh gain keeps the activation std level",
        "digits",
        deep_tanh_with_gain,
        "sgd",
        0.1,
        64,
        12,
    ),
)


def configurations(families: tuple[Family, ...] = FAMILIES) -> tuple[Configuration, ...]:
    """The configurations of the chosen model families, in a fixed order."""
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown model family {unknown}; expected some of {list(FAMILIES)}")
    return tuple(config for config in CONFIGURATIONS if config.family in families)


def build_optimizer(config: Configuration, model: nn.Module) -> torch.optim.Optimizer:
    """Adam (betas 0.9, 0.999) or plain SGD (as in makemore), at ``config.lr``."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    return torch.optim.SGD(model.parameters(), lr=config.lr)
