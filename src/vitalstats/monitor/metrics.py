"""From flushed sums to the named metrics of the contract (host side, float64 numpy).

    act_mean, act_std (population), act_min, act_max, act_nonfinite_fraction,
    act_saturated_fraction, act_dead_fraction, out_grad_std        per layer
    grad_norm (L2), grad_std, grad_max_abs, weight_std, grad_to_data = std(g) / std(w),
    update_to_data_log10 = log10(std(w_after - w_before) / std(w_before)),
    adam_m_hat_abs_mean, adam_sqrt_v_hat_mean, adam_step_rms       per parameter
    bn_mean_drift = mean_c |mu_B - mu_run| / sqrt(var_run + eps),
    bn_var_log_ratio = mean_c log(var_B / var_run)                 per BatchNorm
    loss, lr, steps_per_second, grad_norm_total = sqrt(sum grad_norm^2)   run level ("")

Stds of parameters come from the float32 sum and sum of squares: var = E[x^2] - E[x]^2 in
float64, clamped at 0 (relative error about 1e-7 * (1 + mean^2 / var)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vitalstats.monitor.recorder import StepValues


@dataclass(frozen=True)
class StepMetrics:
    """Named values of one optimiser step: ``scalars[(layer, metric)]``,
    ``histograms[(layer, metric)]`` (counts) and raw ``flags`` for the diagnoses."""

    step: int
    scalars: dict[tuple[str, str], float] = field(default_factory=dict)
    histograms: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    flags: dict[tuple[str, str], float] = field(default_factory=dict)


def _std_from_sums(total: float, sumsq: float, n: int) -> float:
    mean = total / n
    return math.sqrt(max(sumsq / n - mean * mean, 0.0))


def derive(values: StepValues, numel: dict[str, int], bn_eps: dict[str, float]) -> StepMetrics:
    """Named metrics of one step; ``numel`` per parameter name, ``bn_eps`` per BatchNorm."""
    out = StepMetrics(values.step)
    scalars, device = out.scalars, values.device
    for (layer, name), value in values.host.items():
        scalars[(layer, name)] = float(value)
    grad_sq_total, any_grad = 0.0, False
    for (layer, name), array in device.items():
        if name == "act":
            count, mean, m2, low, high, nonfinite = array
            scalars[(layer, "act_mean")] = mean
            scalars[(layer, "act_std")] = math.sqrt(m2 / count) if count else math.nan
            scalars[(layer, "act_min")], scalars[(layer, "act_max")] = low, high
            scalars[(layer, "act_nonfinite_fraction")] = nonfinite / count if count else 0.0
            saturated = device.get((layer, "act_saturated"))
            if saturated is not None and count:
                scalars[(layer, "act_saturated_fraction")] = float(saturated) / count
        elif name == "act_alive":
            scalars[(layer, "act_dead_fraction")] = float(np.mean(array == 0))
            block = device.get((layer, "act"))
            if block is not None and array.size:  # how many values each unit saw
                out.flags[(layer, "values_per_unit")] = float(block[0]) / array.size
        elif name == "out_grad":
            count, _, m2 = array[0], array[1], array[2]
            scalars[(layer, "out_grad_std")] = math.sqrt(m2 / count) if count else math.nan
        elif name == "grad_norm":
            norm = float(array)
            scalars[(layer, "grad_norm")] = norm
            grad_sq_total, any_grad = grad_sq_total + norm * norm, True
            if (layer, "grad_sum") in device:
                n = numel[layer]
                std = _std_from_sums(float(device[(layer, "grad_sum")]), norm * norm, n)
                scalars[(layer, "grad_std")] = std
                scalars[(layer, "grad_max_abs")] = float(device[(layer, "grad_max_abs")])
        elif name in ("adam_m_hat_abs_mean", "adam_sqrt_v_hat_mean", "adam_step_rms"):
            scalars[(layer, name)] = float(array)
        elif name == "weight_sum":
            n = numel[layer]
            scalars[(layer, "weight_std")] = _std_from_sums(
                float(array), float(device[(layer, "weight_sumsq")]), n
            )
        elif name in ("act_hist", "grad_hist"):
            out.histograms[(layer, name)] = array.astype(np.int64)
        elif name.endswith("_device"):  # run-level values that were tensors: loss, lr
            scalars[(layer, name.removesuffix("_device"))] = float(array)
        elif name == "nonfinite":  # the layer output's sum: non-finite iff NaN/Inf inside
            out.flags[(layer, name)] = 0.0 if math.isfinite(float(array)) else 1.0
        elif name == "input_sum":  # NaN/Inf iff some rank's input held NaN/Inf
            if not math.isfinite(float(array)):
                local = device.get((layer, "input_sample_sums"), np.zeros(0))
                bad = np.flatnonzero(~np.isfinite(local))
                out.flags[(layer, "input_bad_index")] = float(bad[0]) if bad.size else -1.0
        elif name == "bn_running_nonfinite":
            out.flags[(layer, name)] = float(array)
    if any_grad:
        scalars[("", "grad_norm_total")] = math.sqrt(grad_sq_total)
    _parameter_ratios(scalars, device, numel)
    _norm_layer_drift(scalars, device, bn_eps)
    return out


def _parameter_ratios(scalars: dict, device: dict, numel: dict[str, int]) -> None:
    for (layer, name), array in device.items():
        if name != "update_sum":
            continue
        weight_std = scalars.get((layer, "weight_std"))
        update_std = _std_from_sums(
            float(array), float(device[(layer, "update_sumsq")]), numel[layer]
        )
        if weight_std:  # -inf: the step left the weights unchanged (e.g. below float32 ulp)
            ratio = update_std / weight_std
            scalars[(layer, "update_to_data_log10")] = math.log10(ratio) if ratio else -math.inf
    for (layer, metric), grad_std in list(scalars.items()):
        if metric == "grad_std":
            weight_std = scalars.get((layer, "weight_std"))
            if weight_std:
                scalars[(layer, "grad_to_data")] = grad_std / weight_std


def _norm_layer_drift(scalars: dict, device: dict, bn_eps: dict[str, float]) -> None:
    for (layer, name), block in device.items():
        if name != "bn_batch" or (layer, "bn_running_mean") not in device:
            continue
        count, mean, m2 = block[0], block[1], block[2]
        batch_var = m2 / np.maximum(count, 1)
        running_mean = device[(layer, "bn_running_mean")]
        running_var = device[(layer, "bn_running_var")]
        with np.errstate(divide="ignore", invalid="ignore"):
            drift = np.abs(mean - running_mean) / np.sqrt(running_var + bn_eps[layer])
            log_ratio = np.log(batch_var / running_var)
        scalars[(layer, "bn_mean_drift")] = float(np.mean(drift))
        scalars[(layer, "bn_var_log_ratio")] = float(np.mean(log_ratio))
