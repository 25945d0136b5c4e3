"""What the monitor measures, how often, and the named thresholds of its diagnoses.

Every schedule is "measure at optimiser steps where ``step % every == 0``"; ``every=0``
switches a probe off. The defaults keep the overhead within 3% of a plain training step
(see benchmarks/monitor_overhead.py); ``MonitorConfig.everything()`` measures all of it on
every step. ``kernels`` chooses how the statistics are computed (``vitalstats.stats.kernels``):
``"auto"`` (the default) runs the fused C kernels of ``vitalstats.stats.native`` on the CPU
where they build (about a second, once per machine; the eager code otherwise, silently) and
the eager code on accelerators; ``"compiled"`` adds ``torch.compile``d kernels on accelerators
and warns once where a compiled kernel is impossible; ``"eager"`` is the plain ATen code.
All three give the same statistics within float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Literal


@dataclass(frozen=True)
class Thresholds:
    """Named thresholds of the diagnoses (docs/monitor.md has the table of codes)."""

    vanishing_grad_ratio: float = 1e-4  # weight grad norm / largest weight grad norm (SGD ...)
    vanishing_grad_ratio_adam: float = (
        1e-6  # Adam-family: per-element steps keep small grads moving
    )
    exploding_grad_norm: float = 1e3  # total L2 gradient norm
    saturated_fraction: float = 0.2  # fraction of tanh-like outputs with |y| > saturation_level
    saturation_level: float = 0.97  # makemore's threshold on |tanh|
    dead_fraction: float = 0.25  # fraction of ReLU units zero for the whole batch
    dead_min_values: int = 16  # values per unit in the step before dead units are judged
    depth_std_ratio: float = 10.0  # std(last hidden) / std(first) above this or below 1/this
    per_layer_std_ratio: float = 3.0  # geometric mean of that ratio per hidden weighted layer
    update_to_data_log10_low: float = -4.5  # log10 std(update)/std(weight), about -3 is healthy
    update_to_data_log10_high: float = -1.0  # SGD and other optimisers
    update_to_data_log10_high_adam: float = -0.5  # Adam-family steps are ~lr per element
    min_samples: int = 3  # measured steps a rolling-window rule needs (update:data, vanishing)
    lr_loss_rise: float = 0.05  # loss median this fraction above its best: rising after its best
    lr_grad_growth: float = 10.0  # total gradient norm this many times its early median
    lr_min_improvement: float = 0.2  # with large updates, a loss improving less is stuck
    plateau_min_steps: int = 150  # steps before a plateau is judged
    plateau_sigmas: float = 3.0  # improvement below this many standard errors of the level
    plateau_min_improvement: float = 0.02  # ... and below this fraction of the start level
    input_rms_high: float = 30.0  # largest per-feature rms of the input above this
    input_rms_spread: float = 1e3  # largest / smallest per-feature rms above this
    grad_not_zeroed_steps: int = 3  # optimiser steps whose gradient carried the previous one
    logit_abs_limit: float = 50.0  # max |output-layer value| (logit) above this ...
    logit_growth: float = 1.05  # ... and still growing: this much above its value mid-run
    lr_weight_growth: float = 5.0  # median weight-matrix std this many times its first
    loss_spike_sigmas: float = 10.0  # (loss - rolling median) / robust step-to-step noise
    loss_spike_min_rise: float = 0.2  # and the loss is this fraction above the rolling median
    loss_spike_min_noise: float = 0.01  # noise floor, as a fraction of the rolling median
    loss_spike_min_undone: float = 0.25  # and the rise undoes this share of the descent so far
    loss_window: int = 50  # losses the step-to-step noise is measured over
    loss_level_window: int = 10  # losses whose median is the local level a spike is judged on
    loss_divergence_ratio: float = 2.0  # EWM mean (of spike-clipped losses) / best EWM mean
    loss_warmup_steps: int = 20  # steps before spike/divergence checks start
    bn_min_values_per_channel: int = 8  # fewer values per channel -> BN_FEW_VALUES
    bn_momentum_max: float = 0.5  # above -> BN_HIGH_MOMENTUM (Keras convention)
    bn_mean_drift: float = 2.0  # mean over channels |mu_B - mu_run| / sqrt(var_run + eps)
    bn_var_log_ratio: float = 1.5  # |mean over channels log(var_B / var_run)|
    bn_warmup_steps: int = 50  # optimiser steps before drift is judged (running stats settle)
    bn_buffer_divergence: float = 0.5  # vs.nn.check_buffer_divergence spread across ranks
    skipped_step_fraction: float = 0.5  # share of skipped optimiser steps (GradScaler)
    skipped_step_window: int = 20  # steps the share is taken over
    amp_calibration_steps: int = 30  # first steps not judged (the scaler finds its scale)


@dataclass(frozen=True)
class MonitorConfig:
    """Schedules (every N optimiser steps; 0 = off) and options of ``vs.Monitor``."""

    flush_every: int = 100  # steps between device->host copies (and store writes)
    nonfinite_every: int = 1  # per-layer NaN/Inf sentinel (one sum per layer output)
    grad_norm_every: int = 10  # per-parameter gradient L2 norms (one fused _foreach_norm)
    activations_every: int = 50  # mean/std/min/max/non-finite/saturated/dead per layer
    output_grads_every: int = 50  # std of the gradient w.r.t. each layer's output
    parameters_every: int = 50  # grad std, max |g|, weight std, grad:data
    updates_every: int = 50  # update:data (needs a copy of the weights before the step)
    optimizer_moments_every: int = 50  # Adam-family exp_avg/exp_avg_sq statistics
    norm_layers_every: int = 50  # batch vs running statistics of BatchNorm layers
    histograms_every: int = 250  # fixed-bin histograms of activations and gradients
    histogram_bins: int = 64
    activation_histogram_range: tuple[float, float] = (-5.0, 5.0)  # values outside -> end bins
    gradient_histogram_log10_range: tuple[float, float] = (-12.0, 2.0)  # of |g|, zeros -> bin 0
    histogram_max_values: int | None = 8192  # sampled per tensor in runs of 16; None = all
    loss_ewm_beta: float = 0.98
    history_steps: int = 1000  # flushed StepMetrics kept in Monitor.history
    kernels: Literal["auto", "eager", "compiled"] = "auto"  # see the module docstring
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_every") and (not isinstance(value, int) or value < 0):
                raise ValueError(
                    f"MonitorConfig.{f.name}: expected an int >= 0 (0 = off), got {value!r}"
                )
        if self.flush_every < 1:
            raise ValueError(f"MonitorConfig.flush_every: expected >= 1, got {self.flush_every}")
        if self.kernels not in ("auto", "eager", "compiled"):
            raise ValueError(
                "MonitorConfig.kernels: expected 'auto', 'eager' or 'compiled', got "
                f"{self.kernels!r}"
            )
        if not 0.0 < self.loss_ewm_beta < 1.0:
            raise ValueError(
                f"MonitorConfig.loss_ewm_beta: expected 0 < beta < 1, got {self.loss_ewm_beta}"
            )

    @classmethod
    def everything(cls, **overrides: object) -> MonitorConfig:
        """Every probe on every step (histograms included)."""
        every = {f.name: 1 for f in fields(cls) if f.name.endswith("_every")}
        every.pop("flush_every")
        return replace(cls(), **{**every, **overrides})  # type: ignore[arg-type]


def due(every: int, step: int) -> bool:
    """True when a probe scheduled ``every`` steps runs at ``step`` (0 = off)."""
    return every > 0 and step % every == 0
