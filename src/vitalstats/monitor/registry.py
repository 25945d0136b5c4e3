"""The one registry of the monitor's metrics: name, scope, unit, definition, schedule.

Probes, ``metrics.derive``, the diagnoses, the report and docs/monitor.md all use these
names (the constants below); the docs table is generated from ``METRICS``
(``python -m vitalstats.monitor.registry`` prints it) and a test checks it is current. A
metric name, once released, never changes meaning: run stores keep them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["run", "layer", "parameter", "norm_layer"]


@dataclass(frozen=True)
class Metric:
    """One named metric: where it lives (``scope``: the run, a watched layer, a parameter or
    a BatchNorm layer), its ``unit``, its ``definition`` and the ``MonitorConfig`` schedule
    that produces it."""

    name: str
    scope: Scope
    unit: str
    definition: str
    schedule: str
    kind: Literal["scalar", "histogram"] = "scalar"


METRICS: dict[str, Metric] = {}


def _define(name: str, scope: Scope, unit: str, definition: str, schedule: str,
            kind: Literal["scalar", "histogram"] = "scalar") -> str:  # fmt: skip
    METRICS[name] = Metric(name, scope, unit, definition, schedule, kind)
    return name


_EVERY_STEP = "every step"

# fmt: off

# ---------------------------------------------------------------------------------- run level
LOSS = _define("loss", "run", "loss units", "the loss given to step() (the mean of a non-scalar tensor)", _EVERY_STEP)
LOSS_EWM_MEAN = _define("loss_ewm_mean", "run", "loss units", "exponentially weighted mean of the loss, vs.stats.EMVar(loss_ewm_beta)", _EVERY_STEP)
LOSS_EWM_STD = _define("loss_ewm_std", "run", "loss units", "exponentially weighted std of the loss", _EVERY_STEP)
LOSS_MEDIAN = _define("loss_median", "run", "loss units", "median of the previous loss_window losses (the robust baseline of LOSS_SPIKE)", _EVERY_STEP)
LOSS_NOISE = _define("loss_noise", "run", "loss units", "robust step-to-step noise of the loss: 1.4826 * MAD of its first differences / sqrt(2) over the previous loss_window steps", _EVERY_STEP)
LR = _define("lr", "run", "learning rate", "the first param group's learning rate at step()", _EVERY_STEP)
STEPS_PER_SECOND = _define("steps_per_second", "run", "1/s", "1 / wall time between consecutive step() calls", _EVERY_STEP)
GRAD_NORM_TOTAL = _define("grad_norm_total", "run", "gradient units", "sqrt(sum of squared per-parameter gradient norms)", "grad_norm_every")
EVAL_LOSS = _define("eval_loss", "run", "loss units", "mean of the losses added in Monitor.evaluating() (weighted by count)", "on evaluation")
STEP_SKIPPED = _define("optimizer_step_skipped", "run", "0 or 1", "1 when no optimizer.step() ran since the last step() call (a GradScaler skipping an overflow step), else 0", _EVERY_STEP)
AMP_SCALE = _define("amp_scale", "run", "factor", "torch.amp.GradScaler's loss scale (with Monitor(scaler=...))", _EVERY_STEP)
INPUT_RMS_MAX = _define("input_rms_max", "run", "input units", "largest per-feature root mean square sqrt(mean^2 + var) of the model input (features: columns of (N, F), last dim of (N, L, F), channels of (N, C, ...))", "activations_every")
INPUT_RMS_MIN = _define("input_rms_min", "run", "input units", "smallest non-zero per-feature root mean square of the model input", "activations_every")

# ---------------------------------------------------------------------------------- per layer
ACT_MEAN = _define("act_mean", "layer", "output units", "mean of every value of the layer output in the optimiser step (all micro-batches and ranks pooled)", "activations_every")
ACT_STD = _define("act_std", "layer", "output units", "population std of those values (centred two-pass sums, exact merges)", "activations_every")
ACT_MIN = _define("act_min", "layer", "output units", "smallest output value", "activations_every")
ACT_MAX = _define("act_max", "layer", "output units", "largest output value", "activations_every")
ACT_NONFINITE_FRACTION = _define("act_nonfinite_fraction", "layer", "fraction", "NaN/Inf values / all values of the output: exactly 0 for a finite output; counted exactly by the C kernels (kernels auto/compiled on the CPU), else for outputs above histogram_max_values values estimated from a strided sample of that many", "activations_every")
ACT_SATURATED_FRACTION = _define("act_saturated_fraction", "layer", "fraction", "tanh-like (Tanh, Hardtanh, Softsign): share of values with |y| > saturation_level (0.97, makemore's cut); sigmoid-like: |2y - 1| > saturation_level, the same cut in tanh units since sigmoid(x) = (1 + tanh(x/2)) / 2", "activations_every")
ACT_DEAD_FRACTION = _define("act_dead_fraction", "layer", "fraction", "ReLU/ReLU6: share of units zero for every sample and position of the step; units are dim 1 (features, conv channels), the last dim of an (N, L, C) output after a Linear", "activations_every")
OUT_GRAD_STD = _define("out_grad_std", "layer", "gradient units", "std of d loss / d output", "output_grads_every")

# ---------------------------------------------------------------------------------- per parameter
GRAD_NORM = _define("grad_norm", "parameter", "gradient units", "L2 norm of the gradient (the local shards' norms combined under FSDP2)", "grad_norm_every")
GRAD_STD = _define("grad_std", "parameter", "gradient units", "population std of the gradient's elements", "parameters_every")
GRAD_MAX_ABS = _define("grad_max_abs", "parameter", "gradient units", "largest |gradient element|", "parameters_every")
WEIGHT_STD = _define("weight_std", "parameter", "parameter units", "population std of the parameter's elements before the step", "parameters_every")
GRAD_TO_DATA = _define("grad_to_data", "parameter", "ratio", "grad_std / weight_std", "parameters_every")
UPDATE_TO_DATA_LOG10 = _define("update_to_data_log10", "parameter", "log10 ratio", "log10(std(w_after - w_before) / std(w_before)); -inf when the step left the weights unchanged", "updates_every")
ADAM_M_HAT_ABS_MEAN = _define("adam_m_hat_abs_mean", "parameter", "gradient units", "mean |m| / (1 - beta1^t): Adam's bias-corrected first moment (vs.optim.moment_stats)", "optimizer_moments_every")
ADAM_SQRT_V_HAT_MEAN = _define("adam_sqrt_v_hat_mean", "parameter", "gradient units", "mean sqrt(v / (1 - beta2^t)) (v is max_exp_avg_sq under AMSGrad)", "optimizer_moments_every")
ADAM_STEP_RMS = _define("adam_step_rms", "parameter", "parameter units", "rms(lr * m_hat / (sqrt(v_hat) + eps)): the Adam step without decoupled weight decay", "optimizer_moments_every")

# ---------------------------------------------------------------------------------- BatchNorm
BN_MEAN_DRIFT = _define("bn_mean_drift", "norm_layer", "running stds", "mean over channels of |mu_B - mu_run| / sqrt(var_run + eps), against the running statistics from before the batch", "norm_layers_every")
BN_VAR_LOG_RATIO = _define("bn_var_log_ratio", "norm_layer", "log ratio", "mean over channels of log(var_B / var_run) (biased batch variance)", "norm_layers_every")

# ---------------------------------------------------------------------------------- histograms
ACT_HIST = _define("act_hist", "layer", "counts", "fixed-bin histogram of output values over activation_histogram_range (values outside and +-Inf in the end bins, NaN left out), from a sample of at most histogram_max_values in evenly spaced runs of 16 consecutive values", "histograms_every", "histogram")
GRAD_HIST = _define("grad_hist", "parameter", "counts", "fixed-bin histogram of log10 |gradient| over gradient_histogram_log10_range (zeros in the first bin), same sampling", "histograms_every", "histogram")
# fmt: on


def markdown_table() -> str:
    """The metrics as the Markdown table docs/monitor.md carries (between its markers)."""
    lines = ["| metric | scope | unit | definition | schedule |", "| --- | --- | --- | --- | --- |"]
    for metric in METRICS.values():
        definition = metric.definition.replace("|", "\\|")
        lines.append(
            f"| `{metric.name}` | {metric.scope} | {metric.unit} | {definition} | "
            f"`{metric.schedule}` |".replace("`every step`", "every step").replace(
                "`on evaluation`", "on evaluation"
            )
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table(), end="")
