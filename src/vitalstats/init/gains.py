"""Gains and fans: the numbers every initialiser is built from.

A weight of std ``sigma`` applied to ``fan_in`` unit-variance inputs gives outputs of variance
``fan_in * sigma**2`` (seed 004: 512 dims, ``sigma = 1`` gives variance 512). Choosing
``sigma = gain / sqrt(fan)`` keeps the variance constant through depth, where ``gain`` makes
up for what the nonlinearity that follows removes (ReLU halves the second moment: gain
``sqrt(2)``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Nonlinearity = Literal[
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
]
FanMode = Literal["fan_in", "fan_out"]

_GAIN_ONE = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
)
KNOWN_NONLINEARITIES: tuple[str, ...] = (*_GAIN_ONE, "tanh", "relu", "leaky_relu", "selu")


def calculate_gain(nonlinearity: Nonlinearity | str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity, exactly as ``torch.nn.init.calculate_gain``.

    linear, conv*, conv_transpose*, sigmoid: 1; tanh: 5/3; relu: sqrt(2);
    leaky_relu: sqrt(2 / (1 + negative_slope**2)) with ``param`` the slope (default 0.01);
    selu: 3/4 (torch's empirical value; for a self-normalising network use "linear").

        >>> calculate_gain("tanh")
        1.6666666666666667
    """
    if nonlinearity in _GAIN_ONE:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            negative_slope = 0.01
        elif isinstance(param, int | float) and not isinstance(param, bool):
            negative_slope = param
        else:
            raise ValueError(
                f"calculate_gain('leaky_relu', param): param is the negative slope and must be "
                f"a number; got {param!r} ({type(param).__name__}). Pass e.g. param=0.2."
            )
        return math.sqrt(2.0 / (1 + negative_slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(
        f"calculate_gain: unknown nonlinearity {nonlinearity!r}; expected one of "
        f"{', '.join(KNOWN_NONLINEARITIES)}. For another activation use "
        f"vs.init.second_moment_gain(module), which computes the gain from the activation itself."
    )


def fan_in_and_fan_out(
    weight: torch.Tensor, *, caller: str = "fan_in_and_fan_out"
) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight laid out as torch's layers lay it out.

    Linear ``(out, in)``: ``(in, out)``. Conv ``(out, in / groups, *kernel)``: each fan is
    multiplied by the receptive field ``prod(kernel)``. The same rule as torch, so a
    ConvTranspose weight ``(in, out / groups, *kernel)`` gets its fans swapped, as in torch.
    """
    if weight.dim() < 2:
        raise ValueError(
            f"{caller}: fan_in and fan_out need a weight with at least 2 dimensions "
            f"(out_features, in_features, *kernel); got shape {tuple(weight.shape)}. "
            f"For a bias or a 1-d tensor use torch.nn.init.zeros_ or uniform_."
        )
    receptive_field = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive_field, weight.shape[0] * receptive_field


def fan_for_mode(weight: torch.Tensor, mode: FanMode | str, *, caller: str) -> int:
    """The fan ``mode`` selects: ``fan_in`` keeps forward variance, ``fan_out`` backward."""
    normalised = mode.lower()
    if normalised not in ("fan_in", "fan_out"):
        raise ValueError(
            f"{caller}: mode must be 'fan_in' (preserve forward variance) or 'fan_out' "
            f"(preserve backward variance); got {mode!r}."
        )
    fan_in, fan_out = fan_in_and_fan_out(weight, caller=caller)
    return fan_in if normalised == "fan_in" else fan_out


def _check_fan(name: str, value: int, caller: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{caller}: {name} must be a positive int; got {value!r}.")


def xavier_std(fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    """Glorot/Xavier std ``gain * sqrt(2 / (fan_in + fan_out))``.

    ``xavier_std(512, 256)`` is 0.0510 (seed 000 prints 0.0543, which is wrong).
    A uniform Xavier init uses the bound ``sqrt(3) * xavier_std``.
    """
    _check_fan("fan_in", fan_in, "xavier_std")
    _check_fan("fan_out", fan_out, "xavier_std")
    return gain * math.sqrt(2.0 / float(fan_in + fan_out))


def kaiming_std(fan: int, nonlinearity: Nonlinearity | str = "leaky_relu", a: float = 0.0) -> float:
    """He/Kaiming std ``calculate_gain(nonlinearity, a) / sqrt(fan)``.

    ``kaiming_std(512, "relu")`` is 0.0625; ``kaiming_std(10, "tanh")`` is
    (5/3) / sqrt(10) = 0.527 (seed 001 prints .3084, which is wrong). As in torch, the default
    ``"leaky_relu"`` with ``a=0`` is the ReLU gain sqrt(2).
    """
    _check_fan("fan", fan, "kaiming_std")
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)
