"""Summary statistics of per-parameter gradient norms (the seeds' ``log_gradient_stats``).

For the parameters with a gradient, ``norm_i = ||grad_i||_2``. Over the finite norms::

    mean = sum(norm_i) / k,   std = sqrt(sum((norm_i - mean)**2) / k)   (population, like np.std)
    max  = max(norm_i),       max_name = the parameter holding it
    total_norm = sqrt(sum(norm_i**2)) over all of them (what clip_grad_norm_ clips)

A gradient holding NaN or Inf has a non-finite norm: it is counted and named, and left out of
mean/std/max so one bad tensor does not blank the rest (``total_norm`` is then non-finite).
One ``torch._foreach_norm`` call per (device, dtype) group and one host transfer, where the
seeds' loop calls ``.item()`` once per parameter (a device sync each on a GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vitalstats.optim._params import (
    ParametersLike,
    group_by_device_and_dtype,
    has_foreach_kernels,
    named_tensors,
)


@dataclass(frozen=True)
class GradStats:
    """Gradient-norm statistics of one backward pass (norms in gradient units)."""

    names: tuple[str, ...]  # parameters with a gradient, in order
    norms: tuple[float, ...]  # L2 norm of each one's gradient
    mean: float  # of the finite norms; NaN when none is finite
    std: float  # population std (ddof=0) of the finite norms
    max: float
    max_name: str  # "" when no norm is finite
    total_norm: float  # L2 norm of all gradients as one vector
    nonfinite_count: int  # parameters whose gradient norm is NaN or Inf
    nonfinite_names: tuple[str, ...]

    def as_dict(self) -> dict[str, float | int | str]:
        """The seeds' keys (``grad_norm_mean/std/max``) plus ours, for logging."""
        return {
            "grad_norm_mean": self.mean,
            "grad_norm_std": self.std,
            "grad_norm_max": self.max,
            "grad_norm_max_name": self.max_name,
            "grad_norm_total": self.total_norm,
            "grad_nonfinite_count": self.nonfinite_count,
        }


@torch.no_grad()
def grad_stats(model_or_named_params: ParametersLike) -> GradStats:
    """Mean, std and max of the per-parameter gradient L2 norms, the largest one's name,
    the total norm and the non-finite count (see the module docstring).

    ``model_or_named_params``: an ``nn.Module``, ``model.named_parameters()``, or plain
    tensors (named ``parameter[i]``). Parameters without a gradient are skipped; with none
    at all, the statistics are NaN and ``names`` is empty.
    """
    named = named_tensors(model_or_named_params, argument="grad_stats")
    names = [name for name, p in named if p.grad is not None]
    grads = [p.grad for _, p in named if p.grad is not None]
    if not grads:
        nan = math.nan
        return GradStats((), (), nan, nan, nan, "", nan, 0, ())

    device = grads[0].device
    group_norms, order = [], []
    for indices in group_by_device_and_dtype(grads).values():
        group = [grads[i] for i in indices]
        if has_foreach_kernels(group):
            norms = torch.stack(torch._foreach_norm(group, 2))
        else:
            norms = torch.stack([torch.linalg.vector_norm(g) for g in group])
        group_norms.append(norms.to(device, torch.float64))
        order.extend(indices)
    grouped_values = torch.cat(group_norms).cpu().numpy()  # the one host transfer
    values = np.empty_like(grouped_values)
    values[order] = grouped_values

    finite = np.isfinite(values)
    nonfinite_names = tuple(name for name, ok in zip(names, finite) if not ok)
    if finite.any():
        finite_values = values[finite]
        largest = int(np.flatnonzero(finite)[np.argmax(finite_values)])
        mean, std = float(finite_values.mean()), float(finite_values.std())
        maximum, max_name = float(values[largest]), names[largest]
    else:
        mean = std = maximum = math.nan
        max_name = ""
    return GradStats(
        names=tuple(names),
        norms=tuple(values.tolist()),
        mean=mean,
        std=std,
        max=maximum,
        max_name=max_name,
        total_norm=float(np.sqrt(np.sum(values**2))),
        nonfinite_count=len(nonfinite_names),
        nonfinite_names=nonfinite_names,
    )
