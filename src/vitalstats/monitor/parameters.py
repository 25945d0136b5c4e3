"""Probes on parameters: gradients, weights, the applied update, Adam-family moments.

Every statistic of a tensor is one packed raw summary (``vitalstats.stats.raw_summary``:
count, centre, centred sums, min, max), so all parameters of a kind are recorded as one
``(P, 7)`` tensor per step; Adam's statistics are ``vs.optim.moment_sums`` rows. Nothing
leaves the device.

Sharding. Parameters are grouped by how their values are laid out across ranks:

* plain tensors, and DTensors replicated on every mesh dim (DDP, FSDP2's ignored params):
  every rank holds the same values, so the local ones are the run's (rule ``same``);
* DTensors sharded on some mesh dims (FSDP2's ``fully_shard``, ``Shard(0)``): each rank
  measures its local shard and the shards' summaries are merged exactly across the shard
  group at flush (Chan's formula for the moments, sums for Adam's sums): never a gather of
  the full tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vitalstats.monitor.recorder import Rule, StepAccumulator
from vitalstats.optim.moment_stats import adam_entries, moment_sums, tensor_sums_kernel
from vitalstats.stats import native
from vitalstats.stats.kernels import Mode, check_mode, native_kernels, raw_summaries

# Raw fields, one packed tensor per parameter group and step (metrics.py names them).
GRAD = "grad"  # (P, 7) raw summaries of the gradients (min/max give max |g|)
GRAD_SQ = "grad_sq"  # (P,) squared L2 norms (the cheap grad_norm-only schedule)
WEIGHT = "weight"  # (P, 7) raw summaries of the parameters before the step (no extremes)
UPDATE = "update"  # (P, 7) raw summaries of w_before - w_after (no extremes)
ADAM = "adam"  # (P', 5) vs.optim.moment_sums rows, P' = parameters with Adam state


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return None
    return DTensor


def local_view(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (this rank's elements); any other tensor as it is."""
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(t, dtensor):
        return t.to_local()
    return t


def shard_groups(p: torch.Tensor) -> tuple[Any, ...]:
    """The process groups a DTensor is sharded over (one per sharded mesh dim); () for a
    tensor whose values every rank holds in full."""
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(p, dtensor):
        return ()
    mesh = p.device_mesh
    return tuple(
        mesh.get_group(dim) for dim, placement in enumerate(p.placements) if placement.is_shard()
    )


@dataclass
class ParameterGroup:
    """Parameters that share one layout across ranks (see the module docstring)."""

    index: int
    names: list[str]
    params: list[torch.Tensor]
    groups: tuple[Any, ...]  # () = identical on every rank
    numel: list[int] = field(default_factory=list)  # global element counts

    @property
    def sharded(self) -> bool:
        return bool(self.groups)

    def rule(self, sharded_rule: Rule) -> Rule:
        return sharded_rule if self.sharded else "same"

    @property
    def reduce_over(self) -> Any:
        """What the recorder reduces over: the one shard group, or a tuple of them."""
        if not self.groups:
            return None
        return self.groups[0] if len(self.groups) == 1 else self.groups


def field_name(kind: str, group: ParameterGroup) -> str:
    return kind if group.index == 0 else f"{kind}:{group.index}"


def parse_field(name: str) -> tuple[str, int] | None:
    """(kind, group index) of a parameter field name, None for other fields."""
    kind, _, index = name.partition(":")
    if kind not in (GRAD, GRAD_SQ, WEIGHT, UPDATE, ADAM):
        return None
    return kind, int(index or 0)


class ParameterProbe:
    """Measures the named parameters it is given (those with ``requires_grad``)."""

    def __init__(
        self, named_parameters: list[tuple[str, nn.Parameter]], kernels: str = "auto"
    ) -> None:
        self.named = named_parameters
        self._kernels: Mode = check_mode(kernels)
        self._adam_kernel = tensor_sums_kernel(kernels)
        self.numel = {name: p.numel() for name, p in named_parameters}
        by_layout: dict[tuple[int, ...], ParameterGroup] = {}
        for name, p in named_parameters:
            groups = shard_groups(p)
            key = tuple(id(g) for g in groups)
            if key not in by_layout:
                by_layout[key] = ParameterGroup(len(by_layout), [], [], groups)
            group = by_layout[key]
            group.names.append(name)
            group.params.append(p)
            group.numel.append(p.numel())
        self.groups = sorted(by_layout.values(), key=lambda g: g.index)
        self.group_of = {name: g for g in self.groups for name in g.names}
        self._buffers: dict[tuple[str, int], list[torch.Tensor]] = {}
        self._scratch: dict[tuple[int, int], torch.Tensor] = {}
        self._has_snapshot = False
        self._shift_hints: dict[str, torch.Tensor] = {}
        # sum theta^2 of each parameter after this step, left by the fused update kernel
        self._new_weight_squares: dict[int, torch.Tensor] = {}

    # ----------------------------------------------------------------------------- helpers
    @staticmethod
    def _locals(tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        return [None if t is None else local_view(t.detach()) for t in tensors]

    def _grads(self, group: ParameterGroup) -> list[torch.Tensor | None]:
        grads = []
        for p in group.params:
            g = p.grad
            grads.append(None if g is None or g.is_sparse else g)
        return self._locals(grads)

    def _workspace(self, slot: str, group: ParameterGroup) -> list[torch.Tensor]:
        """One persistent buffer per parameter: a fresh multi-megabyte CPU tensor each step
        would be served by mmap and page-fault on first touch, costing more than the maths."""
        key = (slot, group.index)
        buffers = self._buffers.get(key)
        if buffers is None:
            buffers = [
                torch.empty_like(local_view(p.detach()), memory_format=torch.contiguous_format)
                for p in group.params
            ]
            self._buffers[key] = buffers
        return buffers

    def _summaries(
        self, slot: str, tensors: list[torch.Tensor | None], extremes: bool
    ) -> torch.Tensor:
        """(P, 7) raw summaries (no NaN/Inf count: a non-finite tensor shows in its norm); a
        missing gradient is an empty row."""
        return raw_summaries(tensors, self._kernels, extremes=extremes, count_nonfinite=False,
                             hints=self._hints(slot, len(tensors)))  # fmt: skip

    def _hints(self, slot: str, count: int) -> torch.Tensor | None:
        """Each tensor's mean at its previous summary in this ``slot`` (NaN at first): the
        C kernels' proposed shifts, one pass instead of two (``native``)."""
        if self._kernels == "eager":
            return None
        hints = self._shift_hints.get(slot)
        if hints is None or hints.numel() != count:
            hints = torch.full((count,), float("nan"), dtype=torch.float64)
            self._shift_hints[slot] = hints
        return hints

    # ----------------------------------------------------------------------------- probes
    @torch.no_grad()
    def gradients(self, acc: StepAccumulator, full: bool) -> None:
        """Squared L2 norm of every gradient (one fused call), or with ``full`` its whole
        summary (mean, std, max |g|; the norm is sqrt(M2 + n mean^2))."""
        for group in self.groups:
            grads = self._grads(group)
            present = [g for g in grads if g is not None]
            if not present:
                continue
            if full:
                summaries = self._summaries(field_name(GRAD, group), grads, extremes=True)
                acc.add("", field_name(GRAD, group), summaries, group.rule("summary"),
                        group.reduce_over, tuple(group.names))  # fmt: skip
            else:
                norms = torch._foreach_norm(present, 2, dtype=torch.float32)  # bf16: 3 digits
                squares = iter(n.double().square() for n in norms)
                zero = torch.zeros((), dtype=torch.float64, device=present[0].device)
                packed = torch.stack([zero if g is None else next(squares) for g in grads])
                acc.add("", field_name(GRAD_SQ, group), packed, group.rule("sum"),
                        group.reduce_over, tuple(group.names))  # fmt: skip

    def _fused(
        self,
        slot: str,
        tensors: list[torch.Tensor],
        minus: list[torch.Tensor] | None = None,
        copy_into: list[torch.Tensor] | None = None,
        minus_squares: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The summaries from one fused C kernel call (``native.fused_summaries``), or None
        where it does not apply (eager kernels, a tensor not float32, not dense, ...)."""
        if self._kernels == "eager":
            return None
        partners = minus if minus is not None else copy_into
        pairs = zip(tensors, partners) if partners is not None else ((t, t) for t in tensors)
        if not all(
            a.dtype == b.dtype == torch.float32 and a.shape == b.shape
            and a.stride() == b.stride() and native.supports(a) and native.supports(b)
            for a, b in pairs
        ) or not native_kernels(self._kernels):  # fmt: skip
            return None
        hints = self._hints(slot, len(tensors))
        return native.fused_summaries(
            tensors,
            hints,
            minus=minus,
            copy_into=copy_into,
            minus_squares=minus_squares,  # type: ignore[arg-type]
        )

    @torch.no_grad()
    def weights(self, acc: StepAccumulator, snapshot: bool = False) -> None:
        """Summary (mean, centred M2) of every parameter before the step; with ``snapshot``
        also copy them for the update (one pass over the weights with the C kernels)."""
        for group in self.groups:
            slot, params = field_name(WEIGHT, group), self._locals(group.params)
            before = self._workspace("before", group) if snapshot else None
            summaries = self._fused(slot, params, copy_into=before)  # type: ignore[arg-type]
            if summaries is None:
                summaries = self._summaries(slot, params, extremes=False)
                if before is not None:
                    torch._foreach_copy_(before, params)
            acc.add("", slot, summaries, group.rule("summary"), group.reduce_over,
                    tuple(group.names))  # fmt: skip
        if snapshot:
            self._has_snapshot = True

    @torch.no_grad()
    def snapshot(self) -> None:
        """Copy the parameters before the optimiser step (for the update:data ratio)."""
        for group in self.groups:
            before = self._workspace("before", group)
            torch._foreach_copy_(before, self._locals(group.params))
        self._has_snapshot = True

    @property
    def has_snapshot(self) -> bool:
        return self._has_snapshot

    @torch.no_grad()
    def updates(self, acc: StepAccumulator) -> None:
        """Summary of update = w_before - w_after for every parameter (its mean is negated
        when the metrics are derived)."""
        if not self._has_snapshot:
            return
        self._has_snapshot = False
        self._new_weight_squares.clear()
        for group in self.groups:
            slot, after = field_name(UPDATE, group), self._locals(group.params)
            before = self._workspace("before", group)
            squares = torch.empty(len(after), dtype=torch.float64)
            summaries = self._fused(slot, before, minus=after, minus_squares=squares)  # type: ignore[arg-type]
            if summaries is not None:  # sum theta^2 of the new weights, for Adam's statistics
                self._new_weight_squares.update(zip((id(p) for p in group.params), squares))
            else:
                torch._foreach_sub_(before, after)  # w_before - w_after, in place
                summaries = self._summaries(slot, before, extremes=False)
            acc.add("", slot, summaries, group.rule("summary"), group.reduce_over,
                    tuple(group.names))  # fmt: skip

    @torch.no_grad()
    def optimizer_moments(self, optimizer: torch.optim.Optimizer, acc: StepAccumulator) -> None:
        """Adam-family statistics through ``vs.optim.moment_sums`` on the local shards (any
        optimizer whose groups have ``betas`` and ``eps`` and whose state has ``exp_avg``,
        ``exp_avg_sq`` and ``step``); other optimizers are skipped."""
        if not all("betas" in g and "eps" in g for g in optimizer.param_groups):
            return
        watched = {id(p): name for name, p in self.named}
        entries = [e for e in adam_entries(optimizer) if id(e.param) in watched]
        for group in self.groups:
            members = {id(p) for p in group.params}
            mine = [e for e in entries if id(e.param) in members]
            if not mine:
                continue
            workspace = self._adam_workspace(group)
            known = self._new_weight_squares
            reuse = all(id(e.param) in known for e in mine)  # the update pass summed theta^2
            sums = moment_sums(
                mine, local=local_view, workspace=workspace, kernel=self._adam_kernel,
                with_params=not reuse,
            )  # fmt: skip
            if reuse:
                sums[:, 4] = torch.stack([known[id(e.param)] for e in mine]).to(sums.device)
            acc.add("", field_name(ADAM, group), sums, group.rule("sum"), group.reduce_over,
                    tuple(watched[id(e.param)] for e in mine))  # fmt: skip

    def end_step(self) -> None:
        """Forget what this optimiser step's update pass left for the Adam statistics."""
        self._new_weight_squares.clear()

    def _adam_workspace(self, group: ParameterGroup) -> Callable[[int, torch.Tensor], torch.Tensor]:
        def buffer(index: int, like: torch.Tensor) -> torch.Tensor:
            key = (group.index, index)
            found = self._scratch.get(key)
            if found is None or found.shape != like.shape or found.dtype != like.dtype:
                found = torch.empty_like(like, memory_format=torch.contiguous_format)
                self._scratch[key] = found
            return found

        return buffer
