"""Rules on update:data, judged on the median of a flush window (noisy step to step)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from vitalstats.monitor import registry as r
from vitalstats.monitor.diagnoses.context import RunContext
from vitalstats.monitor.metrics import StepMetrics


class UpdateRule:
    def observe_window(self, window: list[StepMetrics], ctx: RunContext) -> None:
        if not window:
            return
        t = ctx.thresholds
        matrices = ctx.matrices()
        ratios: dict[str, list[float]] = defaultdict(list)
        for m in window:
            if ctx.poisoned(m.step):
                continue
            for (layer, metric), value in m.scalars.items():
                if metric == r.UPDATE_TO_DATA_LOG10 and layer in matrices:
                    ratios[layer].append(value)
        step = window[-1].step
        for layer, values in ratios.items():
            median = float(np.median(values))
            if median < t.update_to_data_log10_low:
                ctx.add(
                    "UPDATE_RATIO_LOW", layer, step,
                    f"median log10(std(update)/std(weight)) is {median:.2f} over the last "
                    f"{len(values)} measured steps (threshold {t.update_to_data_log10_low}; "
                    "about -3 is healthy).",
                    "raise the learning rate for this layer (or check it is not frozen by a "
                    "tiny lr / huge weight decay).",
                )  # fmt: skip
            elif median > t.update_to_data_log10_high:
                ctx.add(
                    "UPDATE_RATIO_HIGH", layer, step,
                    f"median log10(std(update)/std(weight)) is {median:.2f} over the last "
                    f"{len(values)} measured steps (threshold {t.update_to_data_log10_high}; "
                    "about -3 is healthy).",
                    "lower the learning rate (or add warm-up); each step rewrites a large part "
                    "of the weights.",
                )  # fmt: skip
