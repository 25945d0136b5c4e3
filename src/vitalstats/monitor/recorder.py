"""Device-side accumulation of one optimiser step, and the batched copy at flush time.

Probes ``add`` device tensors under a key ``(layer, field)`` with a merge ``Rule``; values
from several micro-batches of one optimiser step (gradient accumulation) merge by that rule
on the device. ``StepAccumulator.close`` freezes a step's tensors (no host sync, no device
work). ``gather`` concatenates every step of a flush window, merges across
``torch.distributed`` ranks and copies to the host in one transfer.

Rules: ``sum`` (counts, sums), ``min``/``max`` (elementwise), ``mean`` (summed within a step,
averaged over ranks), ``same`` (identical on every rank, e.g. DDP's averaged gradients: the
local value is kept; within a step the first value is kept) and ``summary``: packed
``(..., 7)`` raw summaries ``[count, K, sum(x - K), sum((x - K)^2), min, max, nonfinite]``
(``vitalstats.stats.summary.raw_summary``, finished into mean and M2 on the host) merged
exactly within a step (Chan et al.) and across ranks (``all_reduce_summaries``).
Each key may name the process group its cross-rank reduction runs over (``group``; None is
the default group): FSDP2 shards reduce over their shard group, data-parallel statistics
over every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from vitalstats.stats.summary import as_raw, finalize, merge_summaries

Rule = Literal["sum", "min", "max", "mean", "same", "summary"]
Key = tuple[str, str]
Entry = tuple[str, torch.Tensor, Rule]  # (field, value, rule) from a probe


@dataclass(frozen=True)
class StepRecord:
    """One closed step: its keys, shapes, rules and process groups, its device values packed
    into one tensor in key order (``_packed``), host values and row labels of packed tensors."""

    step: int
    keys: tuple[Key, ...]
    shapes: tuple[tuple[int, ...], ...]
    rules: tuple[Rule, ...]
    groups: tuple[Any, ...]
    parts: tuple[torch.Tensor, ...]
    host: dict[Key, float]
    labels: dict[Key, tuple[str, ...]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)


class StepAccumulator:
    """Statistics of the current optimiser step, merged over micro-batches on the device."""

    def __init__(self) -> None:
        self._values: dict[Key, torch.Tensor] = {}
        self._rules: dict[Key, Rule] = {}
        self._groups: dict[Key, Any] = {}
        self._host: dict[Key, float] = {}
        self._labels: dict[Key, tuple[str, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self._values or self._host)

    def add(
        self,
        layer: str,
        field: str,
        value: torch.Tensor,
        rule: Rule,
        group: Any = None,
        labels: tuple[str, ...] | None = None,
    ) -> None:
        """Add ``value`` under ``(layer, field)``; a second value in the same step merges by
        ``rule``. ``labels`` names the rows of a packed ``(P, ...)`` value."""
        key = (layer, field)
        old = self._values.get(key)
        if old is not None and old.shape != value.shape:
            return  # e.g. a smaller last micro-batch: the first one's per-sample values stay
        if old is None:
            self._values[key] = value
            self._rules[key] = rule
            self._groups[key] = group
            if labels is not None:
                self._labels[key] = labels
        elif rule in ("sum", "mean"):
            self._values[key] = old + value
        elif rule == "min":
            self._values[key] = torch.minimum(old, value)
        elif rule == "max":
            self._values[key] = torch.maximum(old, value)
        elif rule == "summary":
            self._values[key] = as_raw(merge_summaries(finalize(old), finalize(value)))
        # "same": the first value of the step is kept

    def add_host(self, layer: str, field: str, value: float) -> None:
        """A host-side number (learning rate, wall time); never synchronises."""
        self._host[(layer, field)] = value

    def has(self, layer: str, field: str) -> bool:
        return (layer, field) in self._values or (layer, field) in self._host

    def close(self, step: int) -> StepRecord | None:
        """Freeze the step (its values packed into one tensor) and start a new one."""
        values, rules, groups = self._values, self._rules, self._groups
        host, labels = self._host, self._labels
        self._values, self._rules, self._groups, self._host, self._labels = {}, {}, {}, {}, {}
        if not values and not host:
            return None
        keys = tuple(values)
        return StepRecord(
            step=step,
            keys=keys,
            shapes=tuple(tuple(values[k].shape) for k in keys),
            rules=tuple(rules[k] for k in keys),
            groups=tuple(groups[k] for k in keys),
            parts=_packed([values[k].reshape(-1) for k in keys]),
            host=host,
            labels=labels,
        )


def _packed(parts: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The step's values as one tensor (one allocation kept until the flush, instead of one
    per layer and statistic: dozens of small long-lived blocks per step, left between the
    step's large temporaries, fragment the heap so that every later step faults in fresh
    pages; +6,000 page faults per step, 5 % of a GPT-2 step on CPU)."""
    if len(parts) <= 1:
        return tuple(parts)
    if len({p.dtype for p in parts}) > 1:  # cat promotes int64 + float32 to float32: not exact
        parts = [p if p.is_floating_point() else p.to(torch.float64) for p in parts]
    return (torch.cat(parts),)


@dataclass(frozen=True)
class StepValues:
    """Host values of one step after ``gather``: ``device[(layer, field)]`` numpy arrays in
    their recorded shapes, ``host`` numbers and the row ``labels`` of packed arrays."""

    step: int
    device: dict[Key, np.ndarray]
    host: dict[Key, float]
    labels: dict[Key, tuple[str, ...]] = field(default_factory=dict)


def _distributed(group: Any) -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _any_distributed(groups: Any) -> bool:
    return any(_distributed(g) for g in (groups if isinstance(groups, tuple) else (groups,)))


def gather(records: list[StepRecord]) -> list[StepValues]:
    """Merge ``records`` across ranks (per key: its rule over its process group) and copy
    them to the host in one transfer. Every rank of each group must call this in lockstep."""
    with_data = [r for r in records if r.parts]
    if not with_data:
        return [StepValues(r.step, {}, dict(r.host), dict(r.labels)) for r in records]
    flat = torch.cat([part.to(torch.float64) for r in with_data for part in r.parts])
    spans: dict[tuple[Rule, Any], list[tuple[int, tuple[int, ...]]]] = {}
    offset = 0
    distributed = _any_distributed(None)  # a group of size > 1 needs the default group first
    for record in with_data:
        for shape, rule, group in zip(record.shapes, record.rules, record.groups):
            if distributed and rule != "same" and _any_distributed(group):
                spans.setdefault((rule, group), []).append((offset, shape))
            offset += math.prod(shape)
    for (rule, groups), where in spans.items():
        for group in groups if isinstance(groups, tuple) else (groups,):
            _reduce(flat, rule, group, where)  # over each sharded mesh dim in turn
    host = flat.cpu().numpy()  # the one device -> host copy of the window
    out, position = [], 0
    for record in records:
        device: dict[Key, np.ndarray] = {}
        for key, shape in zip(record.keys, record.shapes):
            size = math.prod(shape)
            device[key] = host[position : position + size].reshape(shape)
            position += size
        out.append(StepValues(record.step, device, dict(record.host), dict(record.labels)))
    return out


def _reduce(flat: torch.Tensor, rule: Rule, group: Any, where: list) -> None:
    """Reduce the spans ``where`` of ``flat`` in place across ``group``: one collective per
    (rule, group) for the whole window."""
    import torch.distributed as dist

    from vitalstats.stats.distributed import all_reduce_summaries

    index = torch.cat([torch.arange(start, start + math.prod(shape)) for start, shape in where]).to(
        flat.device
    )
    part = flat[index]
    if rule == "summary":
        summaries = finalize(part.view(-1, 7))
        merged = as_raw(all_reduce_summaries(summaries, group)).reshape(-1)
    else:
        merged = _to_comm(part, group)
        op = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN,
              "max": dist.ReduceOp.MAX}[rule]  # fmt: skip
        dist.all_reduce(merged, op=op, group=group)
        if rule == "mean":
            merged = merged / dist.get_world_size(group)
    flat[index] = merged.to(flat.device)


def _to_comm(t: torch.Tensor, group: Any) -> torch.Tensor:
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return t.to(torch.device("cuda", torch.cuda.current_device())).contiguous()
    return t.cpu().contiguous()
