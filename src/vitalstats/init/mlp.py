"""The MLP the ``vitalstats propagate`` command and the benchmark analyse."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from vitalstats.init.model_init import init_model_

Activation = Literal["tanh", "relu", "leaky_relu", "sigmoid", "gelu", "silu", "selu", "linear"]
ACTIVATIONS: dict[str, type[nn.Module] | None] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "selu": nn.SELU,
    "linear": None,
}
MLP_INITS: tuple[str, ...] = ("default", "xavier", "kaiming", "normal", "lsuv")


def build_mlp(
    depth: int,
    width: int,
    activation: Activation = "tanh",
    init: Literal["default", "xavier", "kaiming", "normal", "lsuv"] = "default",
    *,
    in_features: int | None = None,
    batch_norm: bool = False,
    bias: bool = True,
    batch: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """``depth`` blocks of Linear(width) [-> BatchNorm1d] [-> activation], initialised by ``init``.

    ``in_features`` (default ``width``) is the first layer's input size. The Linear layers have
    no bias with ``bias=False`` or with ``batch_norm`` (BatchNorm's mean subtraction would
    cancel it). ``"lsuv"`` needs
    ``batch``. ``"linear"`` means no activation.
    """
    if depth < 1 or width < 1:
        raise ValueError(
            f"build_mlp: depth and width must be >= 1; got depth={depth}, width={width}."
        )
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"build_mlp: unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}."
        )
    if init not in MLP_INITS:
        raise ValueError(
            f"build_mlp: unknown init {init!r}; expected one of {', '.join(MLP_INITS)}."
        )
    layers: list[nn.Module] = []
    for index in range(depth):
        layers.append(
            nn.Linear(
                in_features or width if index == 0 else width, width, bias=bias and not batch_norm
            )
        )
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        activation_class = ACTIVATIONS[activation]
        if activation_class is not None:
            layers.append(activation_class())
    model = nn.Sequential(*layers)
    init_model_(model, scheme=init, batch=batch, generator=generator)
    return model
