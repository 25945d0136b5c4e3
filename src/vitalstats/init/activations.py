"""What kind of layer a module is, as far as signal propagation cares.

Weight layers (Linear, Conv) set the scale; elementwise activations change it by a known
factor; norm layers reset it. Norm layers are recognised by duck typing as well as by torch's
classes, so vitalstats' own ``vs.nn`` layers count.
"""

from __future__ import annotations

import torch
from torch import nn

WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)

#: Activations whose output saturates: tanh near +-1, sigmoid near 0 and 1.
SATURATING = (nn.Tanh, nn.Sigmoid)
SATURATION_THRESHOLD = 0.97

#: The ReLU family: the fraction of outputs at or below zero is reported (exactly zero for
#: ReLU and ReLU6, the leaky regime for the leaky variants).
RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU)

#: Parameter-free elementwise functions: their effect on a Gaussian is computed by quadrature.
ELEMENTWISE = (
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Softsign,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Softplus,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Tanhshrink,
    nn.LogSigmoid,
)

#: Activations with no kink: numerical integration converges fast for these.
SMOOTH = (nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus, nn.Tanhshrink, nn.LogSigmoid)

#: Modules that move no scale: the initialiser looks past them for the activation.
TRANSPARENT = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


def is_weight_layer(module: nn.Module) -> bool:
    return isinstance(module, WEIGHT_LAYERS)


def is_batch_norm(module: nn.Module) -> bool:
    """torch's or vitalstats' BatchNorm (anything with running_var and num_features)."""
    return isinstance(module, nn.modules.batchnorm._NormBase) or (
        hasattr(module, "running_var") and hasattr(module, "num_features")
    )


def is_sample_norm(module: nn.Module) -> bool:
    """LayerNorm / GroupNorm: normalised per sample, no running statistics."""
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm | nn.GroupNorm) or name in ("LayerNorm", "GroupNorm")


def is_rms_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.RMSNorm) or type(module).__name__ == "RMSNorm"


def is_norm(module: nn.Module) -> bool:
    return is_batch_norm(module) or is_sample_norm(module) or is_rms_norm(module)


def is_activation(module: nn.Module) -> bool:
    return (isinstance(module, ELEMENTWISE) and not isinstance(module, nn.Identity)) or (
        isinstance(module, nn.PReLU | nn.RReLU)
    )


def elementwise_function(module: nn.Module):
    """``f(x)`` for a float64 1-d tensor, or None when ``module`` is not elementwise."""
    if isinstance(module, ELEMENTWISE):
        return module
    if isinstance(module, nn.PReLU) and module.weight.numel() == 1:
        slope = module.weight.detach().double().cpu()
        return lambda x: torch.nn.functional.prelu(x, slope)
    if isinstance(module, nn.RReLU):  # eval-mode RReLU: the mean slope
        slope = (module.lower + module.upper) / 2
        return lambda x: torch.nn.functional.leaky_relu(x, slope)
    return None


def rectifier_slopes(module: nn.Module) -> tuple[float, float] | None:
    """(E[slope], E[slope^2]) of the negative side for ReLU-like piecewise-linear modules."""
    if isinstance(module, nn.Identity):
        return 1.0, 1.0
    if isinstance(module, nn.ReLU):
        return 0.0, 0.0
    if isinstance(module, nn.LeakyReLU):
        return module.negative_slope, module.negative_slope**2
    if isinstance(module, nn.PReLU) and module.weight.numel() == 1:
        slope = float(module.weight.detach())
        return slope, slope * slope
    if isinstance(module, nn.RReLU):
        lower, upper = module.lower, module.upper
        if module.training:  # slope ~ U(lower, upper) per element
            return (lower + upper) / 2, (lower * lower + lower * upper + upper * upper) / 3
        return (lower + upper) / 2, ((lower + upper) / 2) ** 2
    return None


def torch_nonlinearity(module: nn.Module) -> tuple[str, float | None] | None:
    """The ``calculate_gain`` name (and param) for an activation torch has a gain for."""
    if isinstance(module, nn.ReLU | nn.ReLU6):
        return "relu", None
    if isinstance(module, nn.LeakyReLU):
        return "leaky_relu", float(module.negative_slope)
    if isinstance(module, nn.PReLU):
        return "leaky_relu", float(module.weight.detach().mean())
    if isinstance(module, nn.RReLU):
        return "leaky_relu", (module.lower + module.upper) / 2
    if isinstance(module, nn.Tanh):
        return "tanh", None
    if isinstance(module, nn.Sigmoid):
        return "sigmoid", None
    if isinstance(module, nn.SELU):
        return "selu", None
    return None


def describe(module: nn.Module) -> str:
    """Short type name with the argument that matters, e.g. ``LeakyReLU(0.2)``."""
    name = type(module).__name__
    if isinstance(module, nn.LeakyReLU):
        return f"{name}({module.negative_slope:g})"
    if isinstance(module, nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.Dropout3d):
        return f"{name}({module.p:g})"
    return name


def dropout_keep_probability(module: nn.Module) -> float | None:
    """1 - p for an active (training-mode) standard dropout, 1 in eval, None otherwise."""
    if isinstance(module, nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.Dropout3d):
        return 1.0 - module.p if module.training else 1.0
    return None
