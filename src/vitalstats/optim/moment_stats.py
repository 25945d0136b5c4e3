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

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from vitalstats.stats.batch import compute_dtype


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


def _step_values(steps: list[Tensor | float]) -> list[float]:
    """The step counters as numbers; free for CPU counters, one transfer otherwise."""
    tensors = [step for step in steps if isinstance(step, Tensor)]
    if all(step.device.type == "cpu" for step in tensors):
        return [step.item() if isinstance(step, Tensor) else float(step) for step in steps]
    return torch.stack([torch.as_tensor(s).detach().double().cpu() for s in steps]).tolist()


@dataclass(frozen=True)
class AdamEntry:
    """One parameter that has taken an Adam step: its name, the parameter, its optimizer
    state and its param group."""

    name: str
    param: Tensor
    state: dict[str, Any]
    group: dict[str, Any]


def adam_entries(
    optimizer: Optimizer, named_parameters: Iterable[tuple[str, Tensor]] | None = None
) -> list[AdamEntry]:
    """Every parameter of an Adam-family optimizer that has taken a step (state with
    ``exp_avg``), named from ``named_parameters``, the optimizer's ``param_names`` or
    ``param_groups[g][i]``. A clear TypeError for a non-Adam optimizer."""
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
            if not state or "exp_avg" not in state or "exp_avg_sq" not in state:
                continue
            name = names_by_id.get(id(param)) or (
                group_names[index] if group_names else f"param_groups[{group_index}][{index}]"
            )
            entries.append(AdamEntry(name, param, state, group))
    return entries


MOMENT_SUM_FIELDS = ("count", "m_hat_abs_sum", "sqrt_v_hat_sum", "step_sq_sum", "param_sq_sum")


def _identity(tensor: Tensor) -> Tensor:
    return tensor


def _tensor_sums(
    m: Tensor, v: Tensor, theta: Tensor | None, eps_scaled: float, work: Tensor | None
) -> Tensor:
    """``[sum |m|, sum sqrt(v), sum (m / (sqrt(v) + eps_scaled))^2, sum theta^2]`` of one
    parameter's (real-viewed) moments, accumulated in float32 (float64 for float64 state);
    ``work`` is a scratch buffer shaped like ``m`` (a fresh multi-megabyte CPU temporary
    would page-fault on every call)."""
    dtype = compute_dtype(m.dtype)
    if work is None:
        work = torch.empty_like(m, memory_format=torch.contiguous_format)
    torch.abs(m, out=work)
    abs_sum = work.sum(dtype=dtype)
    torch.sqrt(v, out=work)
    sqrt_sum = work.sum(dtype=dtype)
    work.add_(eps_scaled)
    torch.div(m, work, out=work)
    step_sq = torch.linalg.vector_norm(work, dtype=dtype).square()
    if theta is None:  # the caller does not need sum theta^2 (NaN marks it unmeasured)
        theta_sq = step_sq.new_full((), float("nan"))
    else:
        theta_sq = torch.linalg.vector_norm(theta, dtype=compute_dtype(theta.dtype)).square()
    return torch.stack([abs_sum.double(), sqrt_sum.double(), step_sq.double(), theta_sq.double()])


def _tensor_sums_graph(m: Tensor, v: Tensor, eps_scaled: float) -> Tensor:
    """``_tensor_sums`` (without sum theta^2) as one traceable function, for torch.compile."""
    dtype = torch.promote_types(m.dtype, torch.float32)
    m, v = m.to(dtype), v.to(dtype)
    root = v.sqrt()
    step = m / (root + eps_scaled)
    return torch.stack([m.abs().sum(), root.sum(), (step * step).sum()]).double()


_COMPILED_SUMS: Any = None
_COMPILE_FROM = 4096  # elements: below this the eager kernels are faster (measured)


def _eager_sums(
    ms: list[Tensor],
    vs: list[Tensor],
    thetas: list[Tensor | None],
    eps: list[float],
    works: list[Tensor | None],
) -> Tensor:
    return torch.stack([_tensor_sums(*args) for args in zip(ms, vs, thetas, eps, works)])


def tensor_sums_kernel(mode: str) -> Callable[..., Tensor]:
    """``sums(ms, vs, thetas, eps, works) -> (P, 4)``: ``_tensor_sums`` of each parameter,
    by the eager code or (``"compiled"``) in fused kernels (``vitalstats.stats.kernels``):
    the CPU C kernel for float32 state (the four sums of every parameter in one call), else
    ``torch.compile`` on accelerators."""
    global _COMPILED_SUMS
    from vitalstats.stats import native
    from vitalstats.stats.kernels import CompiledKernel, check_mode, native_kernels

    if check_mode(mode) == "eager":
        return _eager_sums
    accelerated = mode == "compiled"  # "auto": the C kernels on the CPU, eager elsewhere
    if _COMPILED_SUMS is None:
        _COMPILED_SUMS = CompiledKernel(
            "Adam statistics",
            _tensor_sums_graph,
            lambda m, v, e: _tensor_sums(m, v, None, e, None)[:3],
        )
    kernel = _COMPILED_SUMS

    def in_c(m: Tensor, v: Tensor, theta: Tensor | None) -> bool:
        return all(
            t.dtype == torch.float32 and t.shape == m.shape and native.supports(t)
            for t in ((m, v) if theta is None else (m, v, theta))
        )

    def one(m: Tensor, v: Tensor, theta: Tensor | None, eps: float, work: Tensor | None) -> Tensor:
        # torch.compile only for "compiled" accelerator state without theta, from 4096 values
        if (
            not accelerated
            or m.device.type == "cpu"
            or m.numel() < _COMPILE_FROM
            or theta is not None
        ):
            return _tensor_sums(m, v, theta, eps, work)
        return torch.cat([kernel(m, v, eps), m.new_full((1,), float("nan"), dtype=torch.float64)])

    def sums(
        ms: list[Tensor],
        vs: list[Tensor],
        thetas: list[Tensor | None],
        eps: list[float],
        works: list[Tensor | None],
    ) -> Tensor:
        in_native = [i for i in range(len(ms)) if in_c(ms[i], vs[i], thetas[i])]
        if in_native and native_kernels(mode):  # type: ignore[arg-type]
            block = native.adam_sums(
                *([seq[i] for i in in_native] for seq in (ms, vs, thetas, eps))
            )
            if len(in_native) == len(ms):
                return block
            rows = dict(zip(in_native, block))
        else:
            rows = {}
        return torch.stack([
            rows[i] if i in rows else one(ms[i], vs[i], thetas[i], eps[i], works[i])
            for i in range(len(ms))
        ])  # fmt: skip

    return sums


@torch.no_grad()
def moment_sums(
    entries: list[AdamEntry],
    *,
    local: Callable[[Tensor], Tensor] = _identity,
    workspace: Callable[[int, Tensor], Tensor | None] | None = None,
    kernel: Callable[..., Tensor] | None = None,
    with_params: bool = True,
) -> Tensor:
    """Per-parameter sums of Adam's statistics, a float64 ``(P, 5)`` tensor on the first
    parameter's device, columns ``MOMENT_SUM_FIELDS``::

        count, sum |m_hat|, sum sqrt(v_hat), sum step^2, sum theta^2

    over the elements ``local`` returns (identity by default; the monitor passes each
    DTensor's local shard, so shards' sums add up to the whole parameter's). ``workspace(i,
    m)`` may return a reusable scratch tensor shaped like ``m`` for entry ``i``; ``kernel``
    computes every tensor's sums (``tensor_sums_kernel``); ``with_params=False`` skips sum
    theta^2 (NaN). No host read but the CPU step counters."""
    if not entries:
        return torch.zeros((0, len(MOMENT_SUM_FIELDS)), dtype=torch.float64)
    device = local(entries[0].param).device
    steps = _step_values([entry.state["step"] for entry in entries])
    ms, vs, thetas, eps, works, counts, scales = [], [], [], [], [], [], []
    for index, (entry, t) in enumerate(zip(entries, steps)):
        beta1, beta2 = (float(beta) for beta in entry.group["betas"])
        second = entry.state["exp_avg_sq"]
        if entry.group.get("amsgrad"):  # absent only if amsgrad was switched on after a step
            second = entry.state.get("max_exp_avg_sq", second)
        m = _real_view(local(entry.state["exp_avg"]))
        ms.append(m)
        vs.append(_real_view(local(second)))
        thetas.append(_real_view(local(entry.param.detach())) if with_params else None)
        c1, sqrt_c2 = 1 - beta1**t, (1 - beta2**t) ** 0.5
        works.append(workspace(index, m) if workspace is not None else None)
        # m_hat / (sqrt(v_hat) + eps) = (sqrt_c2 / c1) * m / (sqrt(v) + eps * sqrt_c2)
        eps.append(float(entry.group["eps"]) * sqrt_c2)
        counts.append(float(m.numel()))
        scales.append((1.0 / c1, 1.0 / sqrt_c2, (sqrt_c2 / c1) ** 2, entry.group["lr"]))
    sums = (kernel or _eager_sums)(ms, vs, thetas, eps, works).to(device, torch.float64)
    count = torch.tensor(counts, dtype=torch.float64).to(device)
    table = torch.cat([count[:, None], sums], 1)
    factors = torch.tensor([s[:3] for s in scales], dtype=torch.float64).to(device)
    lrs = [s[3] for s in scales]
    if any(isinstance(lr, Tensor) for lr in lrs):  # a tensor lr stays on its device
        lr = torch.stack(
            [torch.as_tensor(lr).detach().reshape(()).to(device, torch.float64) for lr in lrs]
        )
    else:
        lr = torch.tensor([float(lr) for lr in lrs], dtype=torch.float64).to(device)
    table[:, 1:4] *= factors
    table[:, 3] *= lr.square()
    return table


@torch.no_grad()
def moment_stats(
    optimizer: Optimizer, named_parameters: Iterable[tuple[str, Tensor]] | None = None
) -> MomentStats:
    """Per-parameter Adam statistics (see the module docstring) as device tensors.

    ``named_parameters`` (e.g. ``model.named_parameters()``) names the entries; otherwise the
    optimizer's own ``param_names`` or ``param_groups[g][i]``. Parameters that have not
    stepped yet are left out. No host sync (the step counters live on the CPU; torch's
    ``fused``/``capturable`` keep them on the device, which costs one read). The numbers are
    ``moment_sums`` divided by each parameter's element count.
    """
    entries = adam_entries(optimizer, named_parameters)
    if not entries:
        empty = torch.zeros(0, dtype=torch.float64)
        return MomentStats((), empty, empty, empty, empty)
    return stats_from_sums(tuple(entry.name for entry in entries), moment_sums(entries))


def stats_from_sums(names: tuple[str, ...], sums: Tensor) -> MomentStats:
    """``MomentStats`` from ``moment_sums`` rows (summed over shards where sharded)."""
    count, m_abs, sqrt_v, step_sq, param_sq = sums.unbind(1)
    return MomentStats(
        names=names,
        m_hat_abs_mean=m_abs / count,
        sqrt_v_hat_mean=sqrt_v / count,
        step_rms=(step_sq / count).sqrt(),
        update_to_data=(step_sq / param_sq).sqrt(),
    )
