"""LSUV, layer-sequential unit-variance init (Mishkin & Matas 2015, "All you need is a good init").

Orthogonal weights and zero biases first; then, layer by layer in module order, forward the
batch, measure the std of that layer's output and multiply its weight by
``target_std / std`` until ``|std - target_std| <= tol * target_std``. With zero biases a
Linear/Conv output is linear in its weight, so one rescale usually suffices; later layers see
the already-rescaled earlier ones.

    >>> records = vs.init.lsuv_(model, batch)   # [LSUVRecord(name="0", iterations=1, ...), ...]
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitalstats.init import activations
from vitalstats.init.initializers import orthogonal_


@dataclass(frozen=True)
class LSUVRecord:
    """One layer's LSUV result: rescales applied and its output std on the batch afterwards."""

    name: str
    type: str
    iterations: int
    final_std: float
    converged: bool


class _StopForward(Exception):
    """Raised from a hook once the measured layer has run: the rest of the forward is skipped."""


def _output_std(model: nn.Module, layer: nn.Module, batch: Any) -> float | None:
    """Std of ``layer``'s output (its first call) on ``model(batch)``; None if never called."""
    measured: list[float] = []

    def hook(module, inputs, output):
        measured.append(float(output.detach().double().std(correction=0)))
        raise _StopForward

    handle = layer.register_forward_hook(hook)
    try:
        if isinstance(batch, dict):
            model(**batch)
        elif isinstance(batch, list | tuple):
            model(*batch)
        else:
            model(batch)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return measured[0] if measured else None


def lsuv_(
    model: nn.Module,
    batch: Any,
    target_std: float = 1.0,
    tol: float = 0.05,
    max_iter: int = 10,
    generator: torch.Generator | None = None,
) -> list[LSUVRecord]:
    """Initialise every Linear/Conv of ``model`` in place so each outputs ``target_std`` on ``batch``.

    ``batch`` is what the model is called with: a tensor, a tuple of positional arguments or a
    dict of keyword arguments. ``tol`` is relative: stop when ``|std - target_std| <= tol *
    target_std`` or after ``max_iter`` rescales.

    The forwards run with BatchNorm using batch statistics (training behaviour) and dropout
    off, whatever mode the model is in; afterwards every module's train/eval flag and every
    buffer (running statistics) is restored. Returns one :class:`LSUVRecord` per layer reached
    by the forward; a layer the forward never calls is left orthogonal and a warning names it.
    """
    if not (isinstance(target_std, int | float) and target_std > 0):
        raise ValueError(f"lsuv_: target_std must be a positive number; got {target_std!r}.")
    if not (isinstance(tol, int | float) and tol > 0):
        raise ValueError(
            f"lsuv_: tol must be a positive fraction of target_std, e.g. 0.05; got {tol!r}."
        )
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"lsuv_: max_iter must be an int >= 1; got {max_iter!r}.")
    layers = [(name, m) for name, m in model.named_modules() if activations.is_weight_layer(m)]
    if not layers:
        raise ValueError(
            f"lsuv_: {type(model).__name__} has no Linear or Conv layer to initialise."
        )

    with torch.no_grad():
        for _, layer in layers:
            orthogonal_(layer.weight, generator=generator)
            if layer.bias is not None:
                layer.bias.zero_()

    training_flags = [(m, m.training) for m in model.modules()]
    saved_buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    model.train()
    for module in model.modules():
        if "Dropout" in type(module).__name__:
            module.eval()
    records, unreached = [], []
    try:
        with torch.no_grad():
            for name, layer in layers:
                record = _rescale_layer(model, name, layer, batch, target_std, tol, max_iter)
                if record is None:
                    unreached.append(name)
                else:
                    records.append(record)
    finally:
        with torch.no_grad():
            for buffer, saved in saved_buffers:
                buffer.copy_(saved)
        for module, flag in training_flags:
            module.training = flag
    if unreached:
        warnings.warn(
            f"lsuv_: layers {unreached} were not called by model(batch); they keep their "
            "orthogonal init without rescaling.",
            stacklevel=2,
        )
    return records


def _rescale_layer(model, name, layer, batch, target_std, tol, max_iter) -> LSUVRecord | None:
    iterations = 0
    while True:
        std = _output_std(model, layer, batch)
        if std is None:
            return None
        if not math.isfinite(std) or std == 0.0:
            raise ValueError(
                f"lsuv_: layer {name!r} ({type(layer).__name__}) has output std {std} on the "
                "batch, so no rescaling can reach the target; check the batch (constant or "
                "non-finite input) and the layers before it (dead ReLUs)."
            )
        converged = abs(std - target_std) <= tol * target_std
        if converged or iterations == max_iter:
            return LSUVRecord(name, type(layer).__name__, iterations, std, converged)
        layer.weight.mul_(target_std / std)
        iterations += 1
