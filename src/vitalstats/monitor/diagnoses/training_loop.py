"""Rules on the training loop itself: gradients never zeroed, training in eval mode,
probabilities fed to a logit loss, inputs far from unit scale, steps a GradScaler skips."""

from __future__ import annotations

from collections import deque

from vitalstats.monitor import registry as r
from vitalstats.monitor.diagnoses.context import RunContext
from vitalstats.monitor.metrics import StepMetrics
from vitalstats.monitor.state import Observation


class LoopObservations:
    """The hooks' Python facts about the loop (see ``hooks`` and ``Monitor.step``)."""

    def __init__(self) -> None:
        self.carried_over: list[int] = []

    def observe(self, o: Observation, ctx: RunContext) -> None:
        t = ctx.thresholds
        if o.kind == "grad_carried_over":
            self.carried_over.append(o.step)
            streak = self.carried_over[-t.grad_not_zeroed_steps :]
            consecutive = len(streak) == t.grad_not_zeroed_steps and (
                streak[-1] - streak[0] == len(streak) - 1
            )
            if consecutive:
                ctx.add(
                    "GRAD_NOT_ZEROED", "", streak[0],
                    f"the gradients of {len(streak)} consecutive optimiser steps (from step "
                    f"{streak[0]}) were added onto the previous step's: zero_grad() is not "
                    "called between optimiser steps, so every step applies the sum of all "
                    "gradients so far.",
                    "call optimizer.zero_grad() (or model.zero_grad()) once per optimiser step; "
                    "to accumulate micro-batches on purpose, zero after each optimizer.step().",
                )  # fmt: skip
        elif o.kind == "step_in_eval_mode":
            layers = o.data["layers"]
            shown = ", ".join(layers[:4]) + (
                f" (+{len(layers) - 4} more)" if len(layers) > 4 else ""
            )
            ctx.add(
                "STEP_IN_EVAL_MODE", "", o.step,
                f"optimiser steps are taken with the model in eval mode: {shown} normalise with "
                "running statistics and skip dropout while the weights are trained (model.eval() "
                "was not undone).",
                "call model.train() before training (after every evaluation); keep deliberately "
                "frozen BatchNorm layers in eval mode only if their weights are frozen too.",
            )  # fmt: skip
        elif o.kind == "probabilities_to_logit_loss":
            loss, activation = o.data["loss"], o.data["activation"]
            fix = (
                "return logits (drop the final Softmax) and keep cross_entropy; for probabilities "
                "use torch.softmax(logits) outside the loss"
                if loss == "cross_entropy"
                else "return logits (drop the final Sigmoid) and keep BCEWithLogitsLoss"
            )
            ctx.add(
                "LOSS_ON_PROBABILITIES", "", o.step,
                f"the loss applies {loss} (which takes logits and applies its own "
                f"{'log_softmax' if loss == 'cross_entropy' else 'sigmoid'}) to the output of a "
                f"{activation}: the probabilities are squashed twice, the gradients shrink and "
                "the loss cannot reach zero.",
                fix + ".",
            )  # fmt: skip


class InputScaleRule:
    """INPUT_SCALE: the model input's features far from unit scale, or orders apart."""

    def observe(self, m: StepMetrics, ctx: RunContext) -> None:
        high = m.scalars.get(("", r.INPUT_RMS_MAX))
        low = m.scalars.get(("", r.INPUT_RMS_MIN))
        if high is None or low is None or ctx.poisoned(m.step):
            return
        t = ctx.thresholds
        ctx.note("input_rms_max", high)
        if low > 0:
            ctx.note("input_rms_spread", high / low)
        problems = []
        if high > t.input_rms_high:
            problems.append(
                f"its largest feature has rms {high:.4g} (threshold {t.input_rms_high:g})"
            )
        if low > 0 and high / low > t.input_rms_spread:
            problems.append(
                f"feature scales span {high / low:.3g}x ({low:.3g} to {high:.4g}; threshold "
                f"{t.input_rms_spread:g}x)"
            )
        if problems:
            ctx.add(
                "INPUT_SCALE", "", m.step,
                "the model input is not standardised: " + " and ".join(problems) + "; the first "
                "layer's pre-activations and gradients scale with it (saturated units, exploding "
                "or lopsided updates).",
                "standardise the features (vs.data.Standardize, fitted on the training set) or "
                "scale images to [0, 1] / by their channel mean and std.",
            )  # fmt: skip


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
