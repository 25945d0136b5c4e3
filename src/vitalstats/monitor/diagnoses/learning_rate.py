"""LR_TOO_HIGH: the learning rate named as the cause, from its symptoms together.

The evidence, each a host-side reading of histories the other rules keep:

* updates too large: a weight matrix's median update:data above the optimiser family's
  threshold (``UpdateRule.high_layers``);
* the loss rising after its best: the median of the last ``loss_window`` losses at least
  ``lr_loss_rise`` above the lowest such median so far, or ``LOSS_DIVERGENCE``; or the loss
  barely improving (less than ``lr_min_improvement`` of its starting median);
* gradients growing: the total gradient norm ``lr_grad_growth`` times its early median;
* the weights travelling far: the median weight matrix's std ``lr_weight_growth`` times its
  first measured value (Adam at 50x a sane lr rewrites GPT-2's weights 10-20x in 50 steps,
  while its loss still falls);
* the run turning non-finite from finite data (not ``NONFINITE_INPUT``).

Large updates together with a rising loss or growing gradients name the learning rate, as
does weight growth alone, or a run that turns non-finite after its loss rose or its
gradients grew. Gradients that exploded at step 0 (before any update) or an activation std
trend at initialisation name the initialisation instead: the learning rate is not named. Each alone
is left to its own finding (a spike, a plateau, an exploding norm), which the story then
hangs under LR_TOO_HIGH when both are present.
"""

from __future__ import annotations

import numpy as np

from vitalstats.monitor.diagnoses.context import RunContext
from vitalstats.monitor.diagnoses.signals import Signals
from vitalstats.monitor.diagnoses.updates import UpdateRule


class LearningRateRule:
    def __init__(self, signals: Signals, updates: UpdateRule) -> None:
        self.signals, self.updates = signals, updates

    def _grad_growth(self, ctx: RunContext, before: int | None) -> float | None:
        series = self.signals.grad_norm
        values = [v for s, v in zip(series.steps, series.values) if before is None or s < before]
        if len(values) < 3:
            return None
        early = float(np.median(values[:3]))
        return max(values[3:] or values[-1:]) / early if early > 0 else None

    def _improvement(self, window: int) -> float | None:
        """(first median - last median) / first median of the loss, or None if too short."""
        values = self.signals.loss.array()
        if values.size < 2 * window:
            return None
        first = float(np.median(values[:window]))
        last = float(np.median(values[-window:]))
        return (first - last) / first if first > 0 else None

    def observe_window(self, step: int, ctx: RunContext) -> None:
        growth_series = self.signals.weight_growth
        weight_growth = max(growth_series.values) if growth_series.values else None
        if weight_growth is not None:
            ctx.note("weight_growth", weight_growth)
        if ctx.has("LR_TOO_HIGH") or ctx.has("NONFINITE_INPUT"):
            return
        if ctx.found_at_start("GRAD_EXPLODING", "ACT_STD_DEPTH"):
            return  # exploding before any update: the initialisation, not the learning rate
        t = ctx.thresholds
        evidence: list[str] = []
        high = self.updates.high_layers(ctx)
        rise = self.signals.loss_rise(t.loss_window)
        rising = rise is not None and rise[0] > rise[1] * (1 + t.lr_loss_rise) and rise[1] > 0
        if rising:
            evidence.append(
                f"the loss median of the last {t.loss_window} steps is {rise[0]:.4g}, "
                f"{rise[0] / rise[1] - 1:.0%} above its best {rise[1]:.4g}"
            )
        if ctx.has("LOSS_DIVERGENCE"):
            rising = True
            evidence.append("the smoothed loss diverged (LOSS_DIVERGENCE)")
        stuck = self._improvement(t.loss_window)
        if not rising and stuck is not None and stuck < t.lr_min_improvement:
            rising = True
            evidence.append(f"the loss improved only {stuck:.0%} on its starting median")
        nonfinite = ctx.nonfinite_step
        growth = self._grad_growth(ctx, nonfinite)
        growing = growth is not None and growth >= t.lr_grad_growth
        if growing:
            evidence.append(f"the total gradient norm grew {growth:.3g}x over its early median")
        if high:
            layer, median = high[0]
            evidence.append(
                f"updates are large: median log10 update:data {median:.2f} on {layer}"
                + (f" and {len(high) - 1} more weight(s)" if len(high) > 1 else "")
            )
        travelled = weight_growth is not None and weight_growth >= t.lr_weight_growth
        if travelled:
            evidence.append(
                f"the weights travelled far: the median weight matrix's std is "
                f"{weight_growth:.3g}x its first measured value"
            )
        finite_case = (bool(high) and (rising or growing)) or travelled
        blew_up = nonfinite is not None and (rising or growing or bool(high))
        if not (finite_case or blew_up):
            return
        if blew_up:
            evidence.append(f"then the run turned non-finite at step {nonfinite}")
        where = high[0][0] if high else ""
        ctx.add(
            "LR_TOO_HIGH", where, step if nonfinite is None else nonfinite,
            "the learning rate is too high: " + "; ".join(evidence) + ".",
            "lower the learning rate (by 3-10x), add a warm-up, or clip gradients "
            "(torch.nn.utils.clip_grad_norm_); for Adam-family optimisers a smaller lr on "
            "the largest-moving layers also works.",
        )  # fmt: skip
