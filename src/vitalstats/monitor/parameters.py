"""Probes on parameters: gradients, weights, the applied update, Adam-family moments.

All per-parameter reductions are batched: one fused ``torch._foreach_norm`` over every
gradient (and every weight), per-tensor sums for the means; nothing leaves the device. The
entries use the rule ``same``: under DDP the gradients (and so the weights and optimiser
state) are identical on every rank, so rank 0's values are the run's.
"""

from __future__ import annotations

import torch
from torch import nn

from vitalstats.monitor.recorder import StepAccumulator, value_range


class ParameterProbe:
    """Measures the named parameters it is given (those with ``requires_grad``)."""

    def __init__(self, named_parameters: list[tuple[str, nn.Parameter]]) -> None:
        self.named = named_parameters
        self.numel = {name: p.numel() for name, p in named_parameters}
        self._buffers: dict[str, list[torch.Tensor]] = {}
        self._has_snapshot = False

    def _with_grads(self) -> tuple[list[str], list[torch.Tensor]]:
        names, grads = [], []
        for name, p in self.named:
            g = p.grad
            if g is not None and not g.is_sparse and g.numel():
                names.append(name)
                grads.append(g.detach())
        return names, grads

    @torch.no_grad()
    def gradients(self, acc: StepAccumulator, full: bool) -> None:
        """L2 norm of every gradient (one fused call); with ``full`` also the sum (for the
        mean and std) and max |g|."""
        names, grads = self._with_grads()
        if not grads:
            return
        norms = torch._foreach_norm(grads, 2, dtype=torch.float32)  # bf16 norms: 3 digits
        for name, norm in zip(names, norms):
            acc.add(name, "grad_norm", norm, "same")
        if full:
            for name, g in zip(names, grads):
                low, high = value_range(g)
                acc.add(name, "grad_sum", g.sum(dtype=torch.float32), "same")
                acc.add(name, "grad_max_abs", torch.maximum(-low, high), "same")

    @torch.no_grad()
    def weights(self, acc: StepAccumulator) -> None:
        """Sum and sum of squares of every parameter (its std at flush)."""
        params = [p.detach() for _, p in self.named if p.numel()]
        names = [name for name, p in self.named if p.numel()]
        norms = torch._foreach_norm(params, 2, dtype=torch.float32)
        for name, p, norm in zip(names, params, norms):
            acc.add(name, "weight_sum", p.sum(dtype=torch.float32), "same")
            acc.add(name, "weight_sumsq", norm.square(), "same")

    def _workspace(self, slot: str) -> list[torch.Tensor]:
        """One persistent buffer per parameter: a fresh multi-megabyte CPU tensor each step
        would be served by mmap and page-fault on first touch, costing more than the maths."""
        buffers = self._buffers.get(slot)
        if buffers is None:
            buffers = [
                torch.empty_like(p, memory_format=torch.contiguous_format) for _, p in self.named
            ]
            self._buffers[slot] = buffers
        return buffers

    @torch.no_grad()
    def snapshot(self) -> None:
        """Copy the parameters before the optimiser step (for the update:data ratio)."""
        before = self._workspace("before")
        torch._foreach_copy_(before, [p.detach() for _, p in self.named])
        self._has_snapshot = True

    @property
    def has_snapshot(self) -> bool:
        return self._has_snapshot

    def drop_snapshot(self) -> None:
        self._has_snapshot = False

    @torch.no_grad()
    def updates(self, acc: StepAccumulator) -> None:
        """Sum and sum of squares of update = w_after - w_before (its std at flush)."""
        if not self._has_snapshot:
            return
        self._has_snapshot = False
        diffs = self._workspace("before")
        torch._foreach_sub_(diffs, [p.detach() for _, p in self.named])  # w_before - w_after
        norms = torch._foreach_norm(diffs, 2, dtype=torch.float32)
        for (name, _), diff, norm in zip(self.named, diffs, norms):
            acc.add(name, "update_sum", -diff.sum(dtype=torch.float32), "same")
            acc.add(name, "update_sumsq", norm.square(), "same")

    @torch.no_grad()
    def optimizer_moments(self, optimizer: torch.optim.Optimizer, acc: StepAccumulator) -> None:
        """Adam-family moments from ``optimizer.state`` (``exp_avg``, ``exp_avg_sq``, ``step``)
        with Adam's bias corrections c1 = 1 - beta1^t, c2 = 1 - beta2^t:

            adam_m_hat_abs_mean  = mean |m| / c1
            adam_sqrt_v_hat_mean = mean sqrt(v) / sqrt(c2)
            adam_step_rms        = rms( lr * (m / c1) / (sqrt(v) / sqrt(c2) + eps) )

        the definitions of ``vs.optim.moment_stats`` (parameter units; ``v`` is AMSGrad's
        ``max_exp_avg_sq`` when the group has ``amsgrad``), computed here in scratch buffers.
        """
        index = {id(p): i for i, (_, p) in enumerate(self.named)}
        scratch = self._workspace("optimizer")
        for group in optimizer.param_groups:
            betas, eps = group.get("betas"), group.get("eps")
            if not isinstance(betas, (tuple, list)) or eps is None:
                continue
            beta1, beta2 = float(betas[0]), float(betas[1])
            lr, amsgrad = group.get("lr", 1.0), bool(group.get("amsgrad", False))
            for p in group["params"]:
                state = optimizer.state.get(p)
                i = index.get(id(p))
                if i is None or not state or not p.numel():
                    continue
                m, v, step = state.get("exp_avg"), state.get("exp_avg_sq"), state.get("step")
                if amsgrad and state.get("max_exp_avg_sq") is not None:
                    v = state["max_exp_avg_sq"]
                if m is None or v is None or step is None or m.shape != p.shape:
                    continue
                if isinstance(step, torch.Tensor) and step.device.type == "cpu":
                    step = float(step)  # torch keeps `step` on the CPU unless capturable/fused
                c1, sqrt_c2 = 1 - beta1**step, (1 - beta2**step) ** 0.5
                name, n, work = self.named[i][0], p.numel(), scratch[i]
                torch.abs(m, out=work)
                acc.add(
                    name, "adam_m_hat_abs_mean", work.sum(dtype=torch.float32) / (n * c1), "same"
                )
                torch.sqrt(v, out=work)
                mean_sqrt_v = work.sum(dtype=torch.float32) / (n * sqrt_c2)
                acc.add(name, "adam_sqrt_v_hat_mean", mean_sqrt_v, "same")
                # m_hat / (sqrt(v) / sqrt_c2 + eps) = (sqrt_c2 / c1) * m / (sqrt(v) + eps sqrt_c2)
                work.add_(float(eps) * sqrt_c2)
                torch.div(m, work, out=work)
                rms = torch.linalg.vector_norm(work, dtype=torch.float32) * (
                    sqrt_c2 / (n**0.5 * c1)
                )
                rms = rms * (lr.to(rms.device) if isinstance(lr, torch.Tensor) else lr)
                acc.add(name, "adam_step_rms", rms, "same")
