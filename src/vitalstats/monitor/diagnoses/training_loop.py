"""Rules on the training loop itself: mixed-precision steps the GradScaler skips."""

from __future__ import annotations

from collections import deque

from vitalstats.monitor import registry as r
from vitalstats.monitor.diagnoses.context import RunContext
from vitalstats.monitor.metrics import StepMetrics


class SkippedStepRule:
    """AMP_STEPS_SKIPPED: most optimiser steps of a recent window were skipped (a
    ``torch.amp.GradScaler`` found inf/NaN gradients and did not call ``optimizer.step()``).
    A few skips while the scaler calibrates its scale are normal; the first
    ``amp_calibration_steps`` steps are not judged."""

    def __init__(self, window: int) -> None:
        self.recent: deque[float] = deque(maxlen=window)
        self.seen = 0

    def observe(self, m: StepMetrics, ctx: RunContext) -> None:
        skipped = m.scalars.get(("", r.STEP_SKIPPED))
        if skipped is None:
            return
        self.seen += 1
        t = ctx.thresholds
        if self.seen <= t.amp_calibration_steps:
            return
        self.recent.append(skipped)
        if len(self.recent) < self.recent.maxlen:
            return
        share = sum(self.recent) / len(self.recent)
        if share > t.skipped_step_fraction:
            ctx.add(
                "AMP_STEPS_SKIPPED", "", m.step,
                f"{share:.0%} of the last {len(self.recent)} optimiser steps were skipped "
                f"(threshold {t.skipped_step_fraction:.0%}): the gradients overflowed to "
                "inf/NaN, so the GradScaler did not call optimizer.step() and the weights did "
                "not move.",
                "find the overflow (vs.Monitor's NONFINITE findings at grad_norm_every=1); "
                "lower the learning rate, clip gradients after scaler.unscale_(optimizer), or "
                "use bfloat16 autocast, which needs no loss scaling.",
            )  # fmt: skip
