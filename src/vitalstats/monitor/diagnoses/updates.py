"""Rules on update:data of weight matrices, judged on the median of a rolling window of
measured steps (noisy step to step; never on one sample), with the high threshold of the
optimiser family and the low one only at the full learning rate (not in warm-up or at the
end of a decay)."""

from __future__ import annotations

import math

import numpy as np

from vitalstats.monitor import registry as r
from vitalstats.monitor.diagnoses.context import RunContext
from vitalstats.monitor.diagnoses.signals import Signals
from vitalstats.monitor.metrics import StepMetrics

_WARMUP_LR_SHARE = 0.5  # below this share of the peak lr so far: warm-up or decay


def high_threshold(ctx: RunContext) -> float:
    t = ctx.thresholds
    return (
        t.update_to_data_log10_high_adam
        if ctx.optimizer_family == "adam"
        else t.update_to_data_log10_high
    )


def judged(ctx: RunContext) -> bool:
    """L-BFGS takes line-searched quasi-Newton steps: update:data says little about them."""
    return ctx.optimizer_family != "quasi_newton"


class UpdateRule:
    needs = frozenset({r.UPDATE_TO_DATA_LOG10})

    def __init__(self, signals: Signals) -> None:
        self.signals = signals

    def observe(self, m: StepMetrics, ctx: RunContext) -> None:
        if ctx.poisoned(m.step) or not judged(ctx):
            return
        matrices = ctx.matrices()
        for (layer, metric), value in m.scalars.items():
            if metric != r.UPDATE_TO_DATA_LOG10 or layer not in matrices:
                continue
            if not m.scalars.get((layer, r.GRAD_NORM), 1.0):  # no gradient: nothing to apply
                continue
            self.signals.update_ratios[layer].append((m.step, value))
        self._judge(m.step, ctx)

    def _judge(self, step: int, ctx: RunContext) -> None:
        t = ctx.thresholds
        high = high_threshold(ctx)
        lr = self.signals.lr_at(step)
        full_lr = lr is None or lr >= _WARMUP_LR_SHARE * self.signals.max_lr
        for layer, samples in self.signals.update_ratios.items():
            if len(samples) < t.min_samples or samples[-1][0] != step:
                continue
            values = [v for _, v in samples]
            median = float(np.median(values))
            family = ctx.optimizer_family
            ctx.note(f"update_to_data_log10_median_max[{family}]", median)
            if full_lr:
                ctx.note(f"update_to_data_log10_median_min[{family}]", median, worst="min")
            if median < t.update_to_data_log10_low and full_lr:
                shown = "-inf (no change)" if median == -math.inf else f"{median:.2f}"
                ctx.add(
                    "UPDATE_RATIO_LOW", layer, step,
                    f"median log10(std(update)/std(weight)) is {shown} over the last "
                    f"{len(values)} measured steps (threshold {t.update_to_data_log10_low}; about "
                    "-3 is healthy): the weights barely move.",
                    "raise the learning rate for this layer (or check it is not frozen by a tiny "
                    "lr / huge weight decay, or below float resolution).",
                )  # fmt: skip
            elif median > high:
                ctx.add(
                    "UPDATE_RATIO_HIGH", layer, step,
                    f"median log10(std(update)/std(weight)) is {median:.2f} over the last "
                    f"{len(values)} measured steps (threshold {high} for this optimiser; about "
                    "-3 is healthy): each step rewrites a large part of the weights.",
                    "lower the learning rate (or add warm-up).",
                )  # fmt: skip

    def high_layers(self, ctx: RunContext) -> list[tuple[str, float]]:
        """Weight matrices whose update:data went above the family threshold at some recent
        measured step (the largest value each): evidence to corroborate, not a finding."""
        high = high_threshold(ctx)
        out = []
        for layer, samples in self.signals.update_ratios.items():
            largest = max((v for _, v in samples), default=-math.inf)
            if largest > high:
                out.append((layer, largest))
        return sorted(out, key=lambda item: -item[1])
