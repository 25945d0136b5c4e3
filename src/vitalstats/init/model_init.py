"""Initialise a whole model: every Linear/Conv, with the gain of the activation that follows it.

    >>> records = vs.init.init_model_(model, scheme="kaiming")
    >>> records[0].reason
    "inferred: next activation is '1' (ReLU)"

The activation after a layer is inferred from module order (the order of ``named_modules``,
which is the call order for ``nn.Sequential`` and most hand-written models): norm layers,
dropout, pooling and reshapes between them are skipped. Each record says what was assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from vitalstats.init import activations
from vitalstats.init.gains import calculate_gain, fan_for_mode, fan_in_and_fan_out
from vitalstats.init.initializers import (
    kaiming_normal_,
    kaiming_uniform_,
    orthogonal_,
    xavier_normal_,
    xavier_uniform_,
)
from vitalstats.init.theory import second_moment_gain

Scheme = Literal["kaiming", "xavier", "orthogonal", "normal", "default", "lsuv"]
Distribution = Literal["normal", "uniform"]
SCHEMES: tuple[str, ...] = ("kaiming", "xavier", "orthogonal", "normal", "default", "lsuv")


@dataclass(frozen=True)
class InitRecord:
    """How one layer was initialised: scheme, assumed nonlinearity and gain, realised std."""

    name: str
    type: str
    scheme: str
    nonlinearity: str
    gain: float
    weight_std: float
    reason: str


@dataclass(frozen=True)
class InferredNonlinearity:
    """The activation assumed to follow a layer: its gain name, param, gain and why."""

    nonlinearity: str  # calculate_gain name, or the activation's class name
    param: float | None
    gain: float
    reason: str


def _gain_for(activation: nn.Module, where: str) -> InferredNonlinearity:
    known = activations.torch_nonlinearity(activation)
    label = activations.describe(activation)
    if known is not None:
        name, param = known
        return InferredNonlinearity(
            name,
            param,
            calculate_gain(name, param),
            f"inferred: next activation is {where} ({label})",
        )
    gain = second_moment_gain(activation)
    return InferredNonlinearity(
        type(activation).__name__,
        None,
        gain,
        f"inferred: next activation is {where} ({label}); torch has no gain for it, "
        f"using the second-moment gain 1/sqrt(E[f(z)^2]) = {gain:.4f}",
    )


def infer_nonlinearities(model: nn.Module) -> dict[str, InferredNonlinearity]:
    """For each Linear/Conv (by name), the activation that follows it in module order."""
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    found: dict[str, InferredNonlinearity] = {}
    for position, (name, module) in enumerate(leaves):
        if not activations.is_weight_layer(module):
            continue
        following = InferredNonlinearity(
            "linear", None, 1.0, "inferred: last layer, no activation follows"
        )
        for next_name, next_module in leaves[position + 1 :]:
            if activations.is_activation(next_module):
                following = _gain_for(next_module, repr(next_name))
                break
            if activations.is_weight_layer(next_module):
                following = InferredNonlinearity(
                    "linear",
                    None,
                    1.0,
                    f"inferred: no activation before the next layer {next_name!r}",
                )
                break
            if not (
                activations.is_norm(next_module) or isinstance(next_module, activations.TRANSPARENT)
            ):
                following = InferredNonlinearity(
                    "linear",
                    None,
                    1.0,
                    f"assumed linear: next module {next_name!r} "
                    f"({type(next_module).__name__}) is not an activation",
                )
                break
        found[name] = following
    return found


def _given(nonlinearity: str) -> InferredNonlinearity:
    param = 0.01 if nonlinearity == "leaky_relu" else None  # nn.LeakyReLU's default slope
    return InferredNonlinearity(nonlinearity, param, calculate_gain(nonlinearity, param), "given")


def _default_(layer: nn.Module, generator: torch.Generator | None) -> None:
    """torch's own Linear/Conv init: kaiming_uniform_(a=sqrt(5)), bias U(+-1/sqrt(fan_in))."""
    kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    if layer.bias is not None:
        fan_in, _ = fan_in_and_fan_out(layer.weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        with torch.no_grad():
            layer.bias.uniform_(-bound, bound, generator=generator)


def _init_layer_(layer, scheme, following, distribution, mode, generator) -> None:
    weight = layer.weight
    known = following.nonlinearity in ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu")
    with torch.no_grad():
        if scheme == "kaiming" and known:
            initialiser = kaiming_normal_ if distribution == "normal" else kaiming_uniform_
            initialiser(
                weight,
                a=following.param or 0,
                mode=mode,
                nonlinearity=following.nonlinearity,
                generator=generator,
            )
        elif scheme == "kaiming":
            std = following.gain / math.sqrt(fan_for_mode(weight, mode, caller="init_model_"))
            if distribution == "normal":
                weight.normal_(0, std, generator=generator)
            else:
                weight.uniform_(-math.sqrt(3.0) * std, math.sqrt(3.0) * std, generator=generator)
        elif scheme == "xavier":
            initialiser = xavier_normal_ if distribution == "normal" else xavier_uniform_
            initialiser(weight, gain=following.gain, generator=generator)
        elif scheme == "orthogonal":
            orthogonal_(weight, gain=following.gain, generator=generator)
        elif scheme == "normal":
            weight.normal_(0, 1, generator=generator)
        if scheme == "default":
            _default_(layer, generator)
        elif layer.bias is not None:
            layer.bias.zero_()


def init_model_(
    model: nn.Module,
    scheme: Scheme = "kaiming",
    nonlinearity: str | None = None,
    *,
    distribution: Distribution = "normal",
    mode: Literal["fan_in", "fan_out"] = "fan_in",
    batch: Any = None,
    generator: torch.Generator | None = None,
) -> list[InitRecord]:
    """Initialise every Linear/Conv of ``model`` in place; returns one :class:`InitRecord` each.

    Schemes: ``kaiming`` (std gain / sqrt(fan)), ``xavier`` (gain * sqrt(2 / (fan_in +
    fan_out))), ``orthogonal`` (all singular values = gain), ``normal`` (N(0, 1), the unscaled
    baseline of seeds 001/004: variance grows by fan_in per layer), ``default`` (torch's own
    ``reset_parameters`` formula, biases included) and ``lsuv`` (needs ``batch``; see
    :func:`lsuv_`). Gains come from ``nonlinearity`` for every layer if given, else from the
    activation inferred to follow each layer. Biases are zeroed except by ``default``.
    """
    if scheme not in SCHEMES:
        raise ValueError(
            f"init_model_: unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}."
        )
    if distribution not in ("normal", "uniform"):
        raise ValueError(
            f"init_model_: distribution must be 'normal' or 'uniform'; got {distribution!r}."
        )
    if scheme == "lsuv" and batch is None:
        raise ValueError("init_model_(scheme='lsuv') needs batch=<a representative input batch>.")
    followings = infer_nonlinearities(model)
    if not followings:
        raise ValueError(
            f"init_model_: {type(model).__name__} has no Linear or Conv layer to initialise."
        )
    if nonlinearity is not None:
        followings = dict.fromkeys(followings, _given(nonlinearity))
    reasons: dict[str, str] = {}
    if scheme == "lsuv":
        from vitalstats.init.lsuv import lsuv_

        for record in lsuv_(model, batch, generator=generator):
            reasons[record.name] = (
                f"LSUV: {record.iterations} rescale(s), output std "
                f"{record.final_std:.4f}{'' if record.converged else ' (not converged)'}"
            )
    records = []
    for name, layer in model.named_modules():
        if name not in followings:
            continue
        following = followings[name]
        if scheme != "lsuv":
            _init_layer_(layer, scheme, following, distribution, mode, generator)
        uses_gain = scheme in ("kaiming", "xavier", "orthogonal")
        records.append(
            InitRecord(
                name=name,
                type=type(layer).__name__,
                scheme=scheme,
                nonlinearity=following.nonlinearity,
                gain=following.gain if uses_gain else 1.0,
                weight_std=float(layer.weight.detach().double().std(correction=0)),
                reason=reasons.get(name, following.reason),
            )
        )
    return records
