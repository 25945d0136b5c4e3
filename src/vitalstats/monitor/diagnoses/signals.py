"""Histories several rules read: the loss, the total gradient norm, the learning rate and
each weight matrix's recent update:data (host floats, appended as steps are diagnosed)."""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np

from vitalstats.monitor import registry as r
from vitalstats.monitor.metrics import StepMetrics


@dataclass
class Series:
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, step: int, value: float) -> None:
        self.steps.append(step)
        self.values.append(value)

    def array(self) -> np.ndarray:
        return np.asarray(self.values, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class Signals:
    loss: Series = field(default_factory=Series)  # finite losses only
    grad_norm: Series = field(default_factory=Series)  # finite totals only
    lr: Series = field(default_factory=Series)
    update_ratios: dict[str, deque] = field(
        default_factory=lambda: defaultdict(lambda: deque(maxlen=5))
    )
    max_lr: float = 0.0
    first_weight_std: dict[str, float] = field(default_factory=dict)
    weight_growth: Series = field(default_factory=Series)  # median over weight matrices

    def record_weights(self, m: StepMetrics, matrices: set[str]) -> None:
        """The median, over weight matrices, of weight_std now / at its first measurement."""
        growth = []
        for (layer, metric), value in m.scalars.items():
            if metric != r.WEIGHT_STD or layer not in matrices or not math.isfinite(value):
                continue
            first = self.first_weight_std.setdefault(layer, value)
            if first > 0:
                growth.append(value / first)
        if growth:
            self.weight_growth.add(m.step, float(np.median(growth)))

    def record(self, m: StepMetrics) -> None:
        loss = m.scalars.get(("", r.LOSS))
        if loss is not None and math.isfinite(loss):
            self.loss.add(m.step, loss)
        total = m.scalars.get(("", r.GRAD_NORM_TOTAL))
        if total is not None and math.isfinite(total):
            self.grad_norm.add(m.step, total)
        lr = m.scalars.get(("", r.LR))
        if lr is not None and math.isfinite(lr):
            self.lr.add(m.step, lr)
            self.max_lr = max(self.max_lr, lr)

    def lr_at(self, step: int) -> float | None:
        """The learning rate recorded at ``step`` (or the last one before it)."""
        if not self.lr.steps:
            return None
        index = int(np.searchsorted(self.lr.steps, step, side="right")) - 1
        return self.lr.values[max(index, 0)]

    def loss_rise(self, window: int) -> tuple[float, float] | None:
        """(median of the last ``window`` losses, lowest median of any earlier ``window``):
        how far the loss now sits above its best level."""
        values = self.loss.array()
        if values.size < 2 * window:
            return None
        now = float(np.median(values[-window:]))
        blocks = [np.median(values[i : i + window]) for i in range(0, values.size - window, window)]
        return now, float(min(blocks))
