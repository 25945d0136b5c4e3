"""Rules on the loss series: spikes against a robust local baseline, divergence, plateaus.

A spike is judged against the local level, the median of the previous ``loss_level_window``
losses, and a robust step-to-step noise, 1.4826 * MAD(first differences) / sqrt(2) over the
previous ``loss_window``: differences remove the slow descent of early training, which
inflates an EWM std so much that a 40-sigma spike reads as 2 sigma. A spike must also undo
``loss_spike_min_undone`` of the descent so far ((loss - level) / (start level - level)): near
a loss of zero the noise is tiny, and a jump from 0.002 to 0.09 is many noise units but
nothing a user must act on. Divergence compares the loss EWM mean with its best value so far;
the EWM is fed losses clipped at the spike threshold, so a single spike is not divergence.
"""

from __future__ import annotations

import math

import numpy as np

from vitalstats.monitor import registry as r
from vitalstats.monitor.diagnoses.context import RunContext
from vitalstats.monitor.diagnoses.signals import Series, Signals
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


def _baselines(
    previous: np.ndarray, new: np.ndarray, window: int, level: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``new``: the median of the ``level`` losses before it (the local level,
    which follows a fast descent) and the robust noise of the up to ``window`` losses before
    it, computed for the whole flush window at once (``previous``: the losses before it)."""
    series = np.concatenate([previous, new])
    medians = np.full(new.size, np.nan)
    noises = np.full(new.size, np.nan)
    first = 0
    while first < new.size and previous.size + first < window:  # a run's first steps
        end = previous.size + first
        if end >= 3:
            medians[first] = np.median(series[max(0, end - level) : end])
            noises[first] = robust_noise(series[:end])
        first += 1
    if first < new.size:  # row k is the window before new[first + k]
        start = previous.size + first - window
        windows = np.lib.stride_tricks.sliding_window_view(series[start:-1], window)
        medians[first:] = np.median(windows[:, -level:], axis=1)
        diffs = np.diff(windows, axis=1)
        spread = np.median(np.abs(diffs - np.median(diffs, axis=1, keepdims=True)), axis=1)
        noises[first:] = _MAD_TO_STD * spread / math.sqrt(2.0)
    return medians, noises


class LossRule:
    """LOSS_SPIKE and LOSS_DIVERGENCE over a flush window; adds loss_ewm_mean/std and
    loss_median/loss_noise to each step's scalars."""

    def __init__(self, loss_ewm_beta: float, window: int, losses: Series) -> None:
        from vitalstats.stats import EMVar

        self.ewm = EMVar(loss_ewm_beta)
        self.best_ewm = math.inf
        self.window = window
        self.losses = losses  # every finite loss so far (Signals.loss), this window's too
        self.start = math.nan  # median of the run's first loss_level_window losses

    def _start_level(self, t) -> float:
        """The loss the run started from: the median of its first ``loss_level_window``
        finite losses (fixed once that many exist; before, the median of those seen)."""
        if not math.isnan(self.start):
            return self.start
        first = self.losses.array()[: t.loss_level_window]
        level = float(np.median(first)) if first.size else math.inf
        if first.size == t.loss_level_window:
            self.start = level
        return level

    def observe_window(self, window: list[StepMetrics], ctx: RunContext) -> None:
        steps = [
            (m, loss)
            for m in window
            if (loss := m.scalars.get(("", r.LOSS))) is not None and math.isfinite(loss)
        ]
        if not steps:
            return
        t = ctx.thresholds
        before = len(self.losses) - len(steps)  # Signals recorded this window's losses already
        previous = self.losses.array()[max(0, before - self.window) : before]
        new = np.asarray([loss for _, loss in steps])
        medians, noises = _baselines(previous, new, self.window, t.loss_level_window)
        for seen, ((m, loss), median, noise) in enumerate(zip(steps, medians, noises), before):
            if math.isfinite(median):
                m.scalars[("", r.LOSS_MEDIAN)], m.scalars[("", r.LOSS_NOISE)] = median, noise
                floor = max(noise, t.loss_spike_min_noise * abs(median), 1e-12)
                z = (loss - median) / floor
                warm = seen >= t.loss_warmup_steps
                rise = loss - median > t.loss_spike_min_rise * abs(median)
                undone = (loss - median) / max(self._start_level(t) - median, 1e-12)
                if warm and not ctx.poisoned(m.step) and rise:
                    ctx.note("loss_spike_z", z)
                    if z > t.loss_spike_sigmas:
                        ctx.note("loss_spike_undone", undone)
                big = undone > t.loss_spike_min_undone
                if warm and z > t.loss_spike_sigmas and rise and big and not ctx.poisoned(m.step):
                    ctx.add(
                        "LOSS_SPIKE", "", m.step,
                        f"loss {loss:.4g} is {z:.1f} noise units above the median {median:.4g} "
                        f"of the previous {t.loss_level_window} steps (robust step-to-step "
                        f"noise {noise:.3g}; threshold {t.loss_spike_sigmas}) and undoes "
                        f"{min(undone, 9.99):.0%} of the descent from the starting level "
                        f"{self._start_level(t):.4g}.",
                        "look for a bad batch at this step (corrupt sample, wrong labels, an "
                        "unnormalised input); if spikes recur lower the learning rate, add "
                        "warm-up or clip gradients.",
                    )  # fmt: skip
            cap = median + t.loss_spike_sigmas * floor if math.isfinite(median) else math.inf
            self._divergence(m, loss, cap, ctx)

    def _divergence(self, m: StepMetrics, loss: float, cap: float, ctx: RunContext) -> None:
        """The loss EWM mean against its best value so far. The EWM is fed the loss clipped
        at ``cap`` (the spike threshold above the local level), so one bad batch, which
        would lift an EWM (beta 0.98) by 2 % of its size, does not read as divergence; a
        loss that keeps rising lifts the local level and the cap with it."""
        t = ctx.thresholds
        self.ewm.update(min(loss, cap))
        ewm_mean, ewm_std = float(self.ewm.mean), float(self.ewm.std)
        m.scalars[("", r.LOSS_EWM_MEAN)] = ewm_mean
        m.scalars[("", r.LOSS_EWM_STD)] = ewm_std
        if self.ewm.step < t.loss_warmup_steps:
            return
        if ewm_mean > 0 and 0 < self.best_ewm < math.inf:
            ratio = ewm_mean / self.best_ewm
            ctx.note("loss_divergence_ratio", ratio)
            if ratio > t.loss_divergence_ratio:
                ctx.add(
                    "LOSS_DIVERGENCE", "", m.step,
                    f"the loss EWM mean {ewm_mean:.4g} is {ratio:.1f}x its best value "
                    f"{self.best_ewm:.4g} (threshold {t.loss_divergence_ratio}x; losses "
                    f"above {t.loss_spike_sigmas} noise units over the local level are "
                    "clipped there, so one spike does not count).",
                    "lower the learning rate (divergence usually means it is too high), add "
                    "warm-up or gradient clipping.",
                )  # fmt: skip
        self.best_ewm = min(self.best_ewm, ewm_mean)


def level_error(values: np.ndarray) -> float:
    """Standard error of the median level of a window of noisy losses (1.2533 sigma / sqrt n,
    sigma from the MAD of the values around their median)."""
    if values.size < 3:
        return math.inf
    sigma = _MAD_TO_STD * float(np.median(np.abs(values - np.median(values))))
    return 1.2533 * sigma / math.sqrt(values.size)


class PlateauRule:
    """LOSS_PLATEAU: after ``plateau_min_steps``, the loss has not improved on its starting
    level by more than its own noise (``plateau_sigmas`` standard errors of the two window
    medians) nor by ``plateau_min_improvement`` of it, while the learning rate is not zero.
    A run that trained and then converged improved first, so it is not a plateau."""

    def __init__(self, signals: Signals) -> None:
        self.signals = signals

    def observe_window(self, step: int, ctx: RunContext) -> None:
        t = ctx.thresholds
        values = self.signals.loss.array()
        if ctx.has("LOSS_PLATEAU") or values.size < t.plateau_min_steps:
            return
        lr = self.signals.lr_at(step)
        if lr is not None and lr <= 0:
            return
        w = t.loss_window
        start, end = values[:w], values[-w:]
        level_start, level_end = float(np.median(start)), float(np.median(end))
        error = math.hypot(level_error(start), level_error(end))
        improvement = level_start - level_end
        small = improvement < t.plateau_min_improvement * abs(level_start)
        if level_start:
            ctx.note("plateau_improvement", improvement / abs(level_start), worst="min")
        if improvement < t.plateau_sigmas * error and small:
            ctx.add(
                "LOSS_PLATEAU", "", step,
                f"the loss has not improved in {values.size} steps: median {level_start:.4g} over "
                f"the first {w} steps, {level_end:.4g} over the last {w} (change "
                f"{-improvement:+.3g}; noise of the levels {error:.3g}).",
                "check that the optimiser gets the model's parameters and a usable learning rate "
                "(raise it if update:data is low), that the loss is computed on logits and the "
                "labels match the outputs, and that gradients reach the early layers.",
            )  # fmt: skip
