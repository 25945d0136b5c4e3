"""Input checks shared by the normalisation functions and layers; each error says what was
expected, what came, and the fix."""

from __future__ import annotations

from torch import Tensor


def describe_shape(t: Tensor) -> str:
    """(2, 3, 4) style, for error messages."""
    return "(" + ", ".join(str(s) for s in t.shape) + ")" if t.dim() != 1 else f"({t.shape[0]},)"


def check_float_input(input: Tensor, layer: str, min_dims: int) -> None:
    """Floating point input with at least ``min_dims`` dims."""
    if not input.is_floating_point():
        raise ValueError(
            f"{layer}: expected a floating point input (float32, float64, float16, bfloat16), "
            f"got {input.dtype} of shape {describe_shape(input)}. Fix: convert with .float()."
        )
    if input.dim() < min_dims:
        raise ValueError(
            f"{layer}: expected an input with at least {min_dims} dims, got {input.dim()}-D "
            f"input of shape {describe_shape(input)}."
        )


def check_param_shape(
    t: Tensor | None, expected: tuple[int, ...], name: str, layer: str, input: Tensor
) -> None:
    """A weight/bias/running buffer must have the expected shape for this input."""
    if t is not None and tuple(t.shape) != expected:
        raise ValueError(
            f"{layer}: {name} must have shape {expected} for input of shape "
            f"{describe_shape(input)}, got {name} of shape {describe_shape(t)}. Fix: the layer's "
            "feature count must equal the input's channel (or normalized) size."
        )
