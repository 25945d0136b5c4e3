"""Diagnoses: what the measured numbers and the hooks' observations mean, as findings.

Only this package and ``linting`` make findings. ``Diagnoser`` feeds every flushed step to
the per-step rules in order (host floats only), each flush window to the window rules, and
the hooks' Python observations to their rules; each rule module holds one family:

    nonfinite    the first NaN/Inf (input, layer, loss, gradient)
    loss         spikes (robust baseline), divergence, plateaus
    gradients    exploding, vanishing
    activations  saturation, dead units, std trend with depth
    updates      update:data too low / too high
    norm_layers  BatchNorm misuse, drift, poisoned buffers, cross-rank divergence
    training_loop  the loop: zero_grad missing, eval mode, probabilities to a logit loss,
                 unscaled inputs, steps a GradScaler skips
    learning_rate  the learning rate named from its symptoms together
    signals      the histories these rules share

Every threshold is a named field of ``Thresholds``; docs/monitor.md has the table of codes.
"""

from __future__ import annotations

from vitalstats.monitor.config import MonitorConfig
from vitalstats.monitor.diagnoses import norm_layers
from vitalstats.monitor.diagnoses.activations import ActivationRule
from vitalstats.monitor.diagnoses.context import RunContext, optimizer_family, parameter_role
from vitalstats.monitor.diagnoses.gradients import GradientRule
from vitalstats.monitor.diagnoses.learning_rate import LearningRateRule
from vitalstats.monitor.diagnoses.loss import LossRule, PlateauRule
from vitalstats.monitor.diagnoses.nonfinite import NonFiniteRule
from vitalstats.monitor.diagnoses.signals import Signals
from vitalstats.monitor.diagnoses.training_loop import (
    InputScaleRule,
    LoopObservations,
    SkippedStepRule,
)
from vitalstats.monitor.diagnoses.updates import UpdateRule
from vitalstats.monitor.findings import FindingLog
from vitalstats.monitor.metrics import StepMetrics
from vitalstats.monitor.registry import WEIGHT_STD
from vitalstats.monitor.state import Observation

__all__ = ["Diagnoser", "RunContext", "optimizer_family", "parameter_role"]


class Diagnoser:
    """Stateful rules over the stream of ``StepMetrics`` and observations of one run."""

    def __init__(self, config: MonitorConfig, log: FindingLog, context: RunContext) -> None:
        self.ctx = context
        self.log = log
        self.signals = Signals()
        updates = UpdateRule(self.signals)
        self._loop = LoopObservations()
        self._step_rules = [
            NonFiniteRule(),  # first: it marks the step from which symptoms are not judged
            GradientRule(),
            ActivationRule(),
            updates,
            norm_layers.NormLayerRule(),
            InputScaleRule(),
            SkippedStepRule(config.thresholds.skipped_step_window),
        ]
        self._loss = LossRule(
            config.loss_ewm_beta, config.thresholds.loss_window, self.signals.loss
        )
        self._window_rules = [
            LearningRateRule(self.signals, updates),
            PlateauRule(self.signals),
        ]

    def observe(self, m: StepMetrics) -> None:
        """Run every per-step rule on one step. A rule with ``needs`` (metric names) only
        sees the steps that measured one of them: most steps carry a loss and the NaN/Inf
        sentinels only, and skipping the rest keeps a flush cheap per step."""
        names = {metric for _, metric in m.scalars}
        self.signals.record(m)
        if WEIGHT_STD in names and not self.ctx.poisoned(m.step):
            self.signals.record_weights(m, self.ctx.matrices())
        for rule in self._step_rules:
            needs = getattr(rule, "needs", None)
            if needs is None or not needs.isdisjoint(names):
                rule.observe(m, self.ctx)

    def observe_window(self, window: list[StepMetrics]) -> None:
        """Rules on the run so far, at the end of a flush window (trends and windows)."""
        if not window:
            return
        self._loss.observe_window(window, self.ctx)  # before the rules that read the losses
        for rule in self._window_rules:
            rule.observe_window(window[-1].step, self.ctx)

    def observations(self, observed: list[Observation]) -> None:
        """The hooks' Python facts since the last flush."""
        for o in observed:
            norm_layers.from_observation(o, self.ctx)
            self._loop.observe(o, self.ctx)

    def buffer_divergence(self, spreads: dict[str, float], step: int) -> None:
        norm_layers.buffer_divergence(spreads, step, self.ctx)
