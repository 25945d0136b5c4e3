"""Rules on the loss series: spikes against a robust local baseline, divergence.

A spike is judged against the median of the previous ``loss_window`` losses and a robust
step-to-step noise, 1.4826 * MAD(first differences) / sqrt(2): differences remove the slow
descent of early training, which inflates an EWM std so much that a 40-sigma spike reads as
2 sigma. Divergence compares the loss EWM mean with its best value so far.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from vitalstats.monitor import registry as r
from vitalstats.monitor.diagnoses.context import RunContext
from vitalstats.monitor.metrics import StepMetrics

_MAD_TO_STD = 1.4826


def robust_noise(values: np.ndarray) -> float:
    """Step-to-step noise of a series: 1.4826 * MAD of its first differences / sqrt(2)
    (the std of i.i.d. noise around a slowly moving level)."""
    if values.size < 3:
        return math.nan
    diffs = np.diff(values)
    mad = float(np.median(np.abs(diffs - np.median(diffs))))
    return _MAD_TO_STD * mad / math.sqrt(2.0)


class LossHistory:
    """Every finite loss seen, in step order (host floats; what the loss rules share)."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.values: list[float] = []

    def add(self, step: int, value: float) -> None:
        self.steps.append(step)
        self.values.append(value)

    def array(self) -> np.ndarray:
        return np.asarray(self.values, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.values)


class LossRule:
    """LOSS_SPIKE and LOSS_DIVERGENCE; adds loss_ewm_* and loss_median/noise to the step."""

    def __init__(self, loss_ewm_beta: float, window: int, history: LossHistory) -> None:
        from vitalstats.stats import EMVar

        self.ewm = EMVar(loss_ewm_beta)
        self.best_ewm = math.inf
        self.recent: deque[float] = deque(maxlen=window)
        self.history = history

    def observe(self, m: StepMetrics, ctx: RunContext) -> None:
        loss = m.scalars.get(("", r.LOSS))
        if loss is None or not math.isfinite(loss):
            return
        t = ctx.thresholds
        if len(self.recent) >= 3:
            recent = np.asarray(self.recent)
            median = float(np.median(recent))
            noise = robust_noise(recent)
            m.scalars[("", r.LOSS_MEDIAN)], m.scalars[("", r.LOSS_NOISE)] = median, noise
            floor = max(noise, t.loss_spike_min_noise * abs(median), 1e-12)
            z = (loss - median) / floor
            warm = len(self.history) >= t.loss_warmup_steps
            rise = loss - median > t.loss_spike_min_rise * abs(median)
            if warm and z > t.loss_spike_sigmas and rise and not ctx.poisoned(m.step):
                ctx.add(
                    "LOSS_SPIKE", "", m.step,
                    f"loss {loss:.4g} is {z:.1f} noise units above the median {median:.4g} of "
                    f"the previous {len(recent)} steps (robust step-to-step noise {noise:.3g}; "
                    f"threshold {t.loss_spike_sigmas}).",
                    "look for a bad batch at this step (corrupt sample, wrong labels, an "
                    "unnormalised input); if spikes recur lower the learning rate, add warm-up "
                    "or clip gradients.",
                )  # fmt: skip
        self.recent.append(loss)
        self.history.add(m.step, loss)
        self.ewm.update(loss)
        ewm_mean, ewm_std = float(self.ewm.mean), float(self.ewm.std)
        m.scalars[("", r.LOSS_EWM_MEAN)] = ewm_mean
        m.scalars[("", r.LOSS_EWM_STD)] = ewm_std
        if self.ewm.step < t.loss_warmup_steps:
            return
        if ewm_mean > 0 and 0 < self.best_ewm < math.inf:
            ratio = ewm_mean / self.best_ewm
            if ratio > t.loss_divergence_ratio:
                ctx.add(
                    "LOSS_DIVERGENCE", "", m.step,
                    f"the loss EWM mean {ewm_mean:.4g} is {ratio:.1f}x its best value "
                    f"{self.best_ewm:.4g} (threshold {t.loss_divergence_ratio}x).",
                    "lower the learning rate (divergence usually means it is too high), add "
                    "warm-up or gradient clipping.",
                )  # fmt: skip
        self.best_ewm = min(self.best_ewm, ewm_mean)
