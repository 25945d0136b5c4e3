"""What Adam's moments say about each parameter's step, computed on the device.

After ``optimizer.step()`` at step t, for each parameter theta with ``n`` elements::

    m_hat = m / (1 - beta1**t)                 bias-corrected first moment  (gradient units)
    v_hat = v / (1 - beta2**t)                 second moment; the running max of v with amsgrad
    step  = lr * m_hat / (sqrt(v_hat) + eps)   the Adam update just applied (parameter units;
                                               without AdamW's decoupled decay)

    m_hat_abs_mean  = mean |m_hat|
    sqrt_v_hat_mean = mean sqrt(v_hat)
    step_rms        = sqrt(mean(step**2))
    update_to_data  = ||step||_2 / ||theta||_2   (= RMS(step) / RMS(theta), dimensionless)

``lr`` is the group's current learning rate: call this after ``optimizer.step()`` and before
``scheduler.step()``, which moves ``lr`` on to the next step's value. Works for
``vitalstats.optim.Adam/AdamW`` and ``torch.optim.Adam/AdamW``, which share the state layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from vitalstats.optim._params import group_by_device_and_dtype


@dataclass(frozen=True)
class MomentStats:
    """Adam's moments summarised per parameter: four float64 tensors of shape (P,).

    ``names[i]`` is the parameter each entry describes. The tensors live on the device of
    the first parameter and have not been copied to the host.
    """

    names: tuple[str, ...]
    m_hat_abs_mean: Tensor
    sqrt_v_hat_mean: Tensor
    step_rms: Tensor
    update_to_data: Tensor

    def scalars(self) -> list[tuple[str, str, float]]:
        """``(parameter, metric, value)`` rows for a store, with one host transfer.

        Metric names: ``adam_m_hat_abs_mean``, ``adam_sqrt_v_hat_mean``, ``adam_step_rms``,
        ``adam_update_to_data``.
        """
        table = torch.stack(
            [self.m_hat_abs_mean, self.sqrt_v_hat_mean, self.step_rms, self.update_to_data]
        ).tolist()
        metrics = ("adam_m_hat_abs_mean", "adam_sqrt_v_hat_mean", "adam_step_rms")
        metrics += ("adam_update_to_data",)
        return [
            (name, metric, row[index])
            for metric, row in zip(metrics, table)
            for index, name in enumerate(self.names)
        ]


def _real_view(tensor: Tensor) -> Tensor:
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def _step_values(steps: list[Tensor]) -> list[float]:
    """The step counters as numbers; free for CPU counters, one transfer otherwise."""
    if all(step.device.type == "cpu" for step in steps):
        return [step.item() for step in steps]
    return torch.stack([step.detach().double().cpu() for step in steps]).tolist()


def _adam_entries(
    optimizer: Optimizer, named_parameters: Iterable[tuple[str, Tensor]] | None
) -> list[tuple[str, Tensor, dict[str, Any], dict[str, Any]]]:
    """(name, parameter, state, group) for every parameter that has taken a step."""
    names_by_id = {id(p): name for name, p in named_parameters} if named_parameters else {}
    entries = []
    for group_index, group in enumerate(optimizer.param_groups):
        if "betas" not in group or "eps" not in group:
            raise TypeError(
                f"moment_stats: expected an Adam or AdamW optimizer (param groups with "
                f"'betas' and 'eps'), got {type(optimizer).__name__}. Pass torch.optim.Adam, "
                "torch.optim.AdamW or vs.optim.Adam/AdamW."
            )
        group_names = group.get("param_names")
        for index, param in enumerate(group["params"]):
            state = optimizer.state.get(param)
            if not state or "exp_avg" not in state:
                continue
            name = names_by_id.get(id(param)) or (
                group_names[index] if group_names else f"param_groups[{group_index}][{index}]"
            )
            entries.append((name, param, state, group))
    return entries


@torch.no_grad()
def moment_stats(
    optimizer: Optimizer, named_parameters: Iterable[tuple[str, Tensor]] | None = None
) -> MomentStats:
    """Per-parameter Adam statistics (see the module docstring) as device tensors.

    ``named_parameters`` (e.g. ``model.named_parameters()``) names the entries; otherwise the
    optimizer's own ``param_names`` or ``param_groups[g][i]``. Parameters that have not
    stepped yet are left out. A few ``torch._foreach_*`` calls per (device, dtype) group and
    no host sync (the step counters live on the CPU; torch's ``fused``/``capturable`` keep
    them on the device, which costs one read).
    """
    entries = _adam_entries(optimizer, named_parameters)
    if not entries:
        empty = torch.zeros(0, dtype=torch.float64)
        return MomentStats((), empty, empty, empty, empty)
    device = entries[0][1].device
    steps = _step_values([state["step"] for _, _, state, _ in entries])

    params, moments1, moments2 = [], [], []
    numels, bias_corrections1, bias_corrections2_sqrt, lrs = [], [], [], []
    for (_, param, state, group), step in zip(entries, steps):
        beta1, beta2 = (float(beta) for beta in group["betas"])
        second = state["exp_avg_sq"]
        if group.get("amsgrad"):  # absent only if amsgrad was switched on after the last step
            second = state.get("max_exp_avg_sq", second)
        params.append(_real_view(param))
        moments1.append(_real_view(state["exp_avg"]))
        moments2.append(_real_view(second))
        numels.append(params[-1].numel())
        bias_corrections1.append(1 - beta1**step)
        bias_corrections2_sqrt.append((1 - beta2**step) ** 0.5)
        lrs.append(group["lr"])

    l1_m, l1_sqrt_v, l2_ratio, l2_param = [], [], [], []
    order: list[int] = []
    for indices in group_by_device_and_dtype(params).values():
        group_m = [moments1[i] for i in indices]
        sqrt_v = torch._foreach_sqrt([moments2[i] for i in indices])
        l1_m.extend(torch._foreach_norm(group_m, 1))
        l1_sqrt_v.extend(torch._foreach_norm(sqrt_v, 1))
        # sqrt(v_hat) + eps, in place: the denominator of the step
        torch._foreach_div_(sqrt_v, [bias_corrections2_sqrt[i] for i in indices])
        torch._foreach_add_(sqrt_v, [entries[i][3]["eps"] for i in indices])
        l2_ratio.extend(torch._foreach_norm(torch._foreach_div(group_m, sqrt_v), 2))
        l2_param.extend(torch._foreach_norm([params[i] for i in indices], 2))
        order.extend(indices)

    def gathered(norms: list[Tensor]) -> Tensor:
        """Norms listed group by group, back in parameter order, as one float64 vector."""
        by_parameter = dict(zip(order, norms))
        return torch.stack([by_parameter[i].to(device, torch.float64) for i in range(len(entries))])

    def column(values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float64).to(device, non_blocking=True)

    if all(not isinstance(value, Tensor) for value in lrs):
        lr = column([float(value) for value in lrs])
    else:  # a tensor lr stays on its device: no read
        lr = torch.stack(
            [
                torch.as_tensor(value)
                .detach()
                .reshape(())
                .to(device, torch.float64, non_blocking=True)
                for value in lrs
            ]
        )
    numel = column([float(n) for n in numels])
    bias_correction1 = column(bias_corrections1)
    step_norm = lr / bias_correction1 * gathered(l2_ratio)
    return MomentStats(
        names=tuple(name for name, _, _, _ in entries),
        m_hat_abs_mean=gathered(l1_m) / (numel * bias_correction1),
        sqrt_v_hat_mean=gathered(l1_sqrt_v) / (numel * column(bias_corrections2_sqrt)),
        step_rms=step_norm / numel.sqrt(),
        update_to_data=step_norm / gathered(l2_param),
    )
