"""Plain-torch figures that prove a pathology happened (never vitalstats): forward hooks of
our own and plain arithmetic on the model, its gradients and its weights.

Each helper runs after the monitor's hooks are removed (or before they are added) and leaves
the model's gradients as ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


@contextmanager
def captured(model: nn.Module, types: tuple[type[nn.Module], ...]) -> Iterator[list]:
    """Collect ``(module, output)`` of every forward of a module of ``types``."""
    seen: list[tuple[nn.Module, torch.Tensor]] = []
    handles = [
        m.register_forward_hook(lambda mod, args, out: seen.append((mod, out.detach())))
        for m in model.modules()
        if isinstance(m, types)
    ]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def forward(model: nn.Module, call: Callable[[], object]) -> None:
    with torch.no_grad():
        call()


def saturated_share(model: nn.Module, call: Callable[[], object], worst: bool = False) -> float:
    """Share of Tanh outputs with |y| > 0.97 and of Sigmoid outputs with |2y - 1| > 0.97, over
    all such layers together, or (``worst``) in the most saturated layer."""
    with captured(model, (nn.Tanh, nn.Sigmoid)) as seen:
        forward(model, call)
    flat, total, shares = 0, 0, []
    for module, out in seen:
        y = out if isinstance(module, nn.Tanh) else 2 * out - 1
        flat += int((y.abs() > 0.97).sum())
        total += y.numel()
        shares.append(float((y.abs() > 0.97).float().mean()))
    return max(shares) if worst else flat / total


def dead_share(model: nn.Module, call: Callable[[], object]) -> float:
    """Share of ReLU units (dim 1: features or channels) that are zero for the whole batch."""
    with captured(model, (nn.ReLU,)) as seen:
        forward(model, call)
    dead, total = 0, 0
    for _, out in seen:
        per_unit = out.transpose(0, 1).reshape(out.shape[1], -1)
        dead += int((per_unit.abs().amax(dim=1) == 0).sum())
        total += per_unit.shape[0]
    return dead / total


def weighted_output_stds(model: nn.Module, call: Callable[[], object]) -> list[float]:
    """std of each Linear/Conv output, in forward order."""
    with captured(model, WEIGHTED) as seen:
        forward(model, call)
    return [float(out.float().std()) for _, out in seen]


def weight_grad_norms(model: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> list[float]:
    """L2 norm of each weight's (ndim >= 2) gradient of ``loss_fn()``, in parameter order."""
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    norms = [
        float(p.grad.norm()) for p in model.parameters() if p.grad is not None and p.dim() >= 2
    ]
    model.zero_grad(set_to_none=True)
    return norms


def total_grad_norm(model: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> float:
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    squares = [p.grad.float().pow(2).sum() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return math.sqrt(float(sum(squares)))


def update_to_data(model: nn.Module, one_step: Callable[[], object]) -> float:
    """Largest log10 std(w_after - w_before) / std(w_before) over the weights, one step."""
    weights = [p for p in model.parameters() if p.dim() >= 2]
    before = [p.detach().clone() for p in weights]
    one_step()
    ratios = [
        float((p.detach() - b).std() / b.std()) for p, b in zip(weights, before) if b.std() > 0
    ]
    model.zero_grad(set_to_none=True)
    return math.log10(max(ratios)) if max(ratios) > 0 else -math.inf


def loss_jump(losses: list[float], step: int, window: int = 20) -> float:
    """(loss[step] - mean of the ``window`` before) / their std: the spike in sigmas."""
    before = torch.tensor(losses[step - window : step], dtype=torch.float64)
    return float((losses[step] - before.mean()) / before.std())


def smoothed(losses: list[float], start: int, stop: int) -> float:
    """Mean loss over steps [start, stop)."""
    part = losses[start:stop]
    return sum(part) / len(part)


def accumulated_over_fresh(model: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> float:
    """||gradient left in .grad|| / ||gradient of one fresh loss_fn()||: about 1 when the
    loop zeroes gradients before each backward, about the step count when it never does."""
    left = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    left_norm = math.sqrt(float(sum(g.float().pow(2).sum() for g in left)))
    fresh = total_grad_norm(model, loss_fn)
    return left_norm / fresh if fresh > 0 else math.inf


def probability_rows(outputs: torch.Tensor, softmax: bool) -> float:
    """Share of output rows that are probabilities: all in [0, 1] (and summing to 1)."""
    inside = ((outputs >= 0) & (outputs <= 1)).all(dim=1)
    if softmax:
        inside &= (outputs.sum(dim=1) - 1).abs() < 1e-4
    return float(inside.float().mean())


def fewest_values_per_channel(model: nn.Module, call: Callable[[], object]) -> int:
    """Smallest N x spatial size over the inputs of every BatchNorm forward."""
    counts: list[int] = []
    handles = [
        m.register_forward_pre_hook(
            lambda mod, args: counts.append(args[0].numel() // args[0].shape[1])
        )
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        forward(model, call)
    finally:
        for h in handles:
            h.remove()
    return min(counts)
