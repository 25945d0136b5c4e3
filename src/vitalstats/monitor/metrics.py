"""From flushed device values to the registry's named metrics (host side, float64 numpy).

``derive`` reads one step's ``StepValues`` (raw fields of the probes: packed summaries
``[count, mean, M2, min, max, nonfinite]``, counts, per-unit flags) and returns its
``StepMetrics``: ``scalars[(layer, metric)]`` with the names of ``registry``, fixed-bin
``histograms`` and ``flags`` (raw facts for the diagnoses, not stored). Every std is
sqrt(M2 / count) of an exactly merged summary; every norm sqrt(M2 + count mean^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vitalstats.monitor import norm_layers as bn
from vitalstats.monitor import probes
from vitalstats.monitor import registry as r
from vitalstats.monitor.parameters import ADAM, GRAD, GRAD_SQ, UPDATE, WEIGHT, parse_field
from vitalstats.monitor.recorder import StepValues

DEVICE_SUFFIX = "_device"  # run-level values given as tensors: loss_device -> loss


@dataclass(frozen=True)
class StepMetrics:
    """Named values of one optimiser step: ``scalars[(layer, metric)]``,
    ``histograms[(layer, metric)]`` (counts) and raw ``flags`` for the diagnoses."""

    step: int
    scalars: dict[tuple[str, str], float] = field(default_factory=dict)
    histograms: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    flags: dict[tuple[str, str], float] = field(default_factory=dict)


_RAW_SUMMARIES = {probes.ACT, probes.OUT_GRAD, probes.INPUT_FEATURES, bn.BN_BATCH}


def finalize(raw: np.ndarray) -> np.ndarray:
    """Host twin of ``vitalstats.stats.summary.finalize``: ``(..., 7)`` raw fields ->
    ``(..., 6)`` [count, mean, M2, min, max, nonfinite] with mean = K + r / n and
    M2 = q - r^2 / n in float64."""
    if raw.ndim == 1:  # one summary (a layer's): plain floats, a tenth of numpy's overhead
        count, shift, residual, centred_sq, low, high, nonfinite = (float(v) for v in raw)
        safe = max(count, 1.0)
        mean = shift + residual / safe if count > 0 else 0.0
        m2 = centred_sq - residual * residual / safe
        m2 = m2 if m2 > 0.0 or math.isnan(m2) else 0.0  # np.maximum propagates NaN too
        return np.array([count, mean, m2, low, high, nonfinite])
    count, shift, residual, centred_sq = raw[..., 0], raw[..., 1], raw[..., 2], raw[..., 3]
    safe = np.maximum(count, 1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        mean = np.where(count > 0, shift + residual / safe, 0.0)
        m2 = np.maximum(centred_sq - residual * residual / safe, 0.0)
    return np.stack([count, mean, m2, raw[..., 4], raw[..., 5], raw[..., 6]], -1)


def _is_raw_summary(key: tuple[str, str]) -> bool:
    parsed = parse_field(key[1]) if key[0] == "" else None
    return key[1] in _RAW_SUMMARIES or (parsed is not None and parsed[0] in (GRAD, WEIGHT, UPDATE))


def _std(summary: np.ndarray) -> float:
    count, m2 = float(summary[0]), float(summary[2])
    return math.sqrt(max(m2, 0.0) / count) if count else math.nan


def _norm(summary: np.ndarray) -> float:
    count, mean, m2 = float(summary[0]), float(summary[1]), float(summary[2])
    return math.sqrt(max(m2, 0.0) + count * mean * mean)


def derive(values: StepValues, bn_eps: dict[str, float] | None = None) -> StepMetrics:
    """Named metrics of one step (see the module docstring); ``bn_eps`` per BatchNorm."""
    out = StepMetrics(values.step)
    device = {k: finalize(v) if _is_raw_summary(k) else v for k, v in values.device.items()}
    values = StepValues(values.step, device, values.host, values.labels)
    scalars, flags = out.scalars, out.flags
    for (layer, name), value in values.host.items():
        scalars[(layer, name)] = float(value)
    for (layer, name), array in device.items():
        if name == probes.ACT:
            _activation(scalars, flags, device, layer, array)
        elif name == probes.OUT_GRAD:
            scalars[(layer, r.OUT_GRAD_STD)] = _std(array)
        elif name in (probes.ACT_HIST, probes.GRAD_HIST):
            out.histograms[(layer, name)] = array.astype(np.int64)
        elif name.endswith(DEVICE_SUFFIX):
            scalars[(layer, name.removesuffix(DEVICE_SUFFIX))] = float(array)
        elif name == probes.NONFINITE:  # the output's sum: non-finite iff NaN/Inf inside
            flags[(layer, name)] = 0.0 if math.isfinite(float(array)) else 1.0
        elif name == probes.INPUT_SUM:  # NaN/Inf iff some rank's input held NaN/Inf
            if not math.isfinite(float(array)):
                local = device.get((layer, probes.INPUT_SAMPLE_SUMS), np.zeros(0))
                bad = np.flatnonzero(~np.isfinite(local))
                flags[("", "input_bad_index")] = float(bad[0]) if bad.size else -1.0
        elif name == probes.INPUT_FEATURES:
            _input_scale(scalars, flags, array)
        elif name == bn.BN_RUNNING_NONFINITE:
            flags[(layer, name)] = float(array)
        elif name == bn.BN_BATCH:
            _norm_layer_drift(scalars, device, layer, array, (bn_eps or {}).get(layer, 1e-5))
    _parameters(scalars, values)
    return out


def _activation(scalars: dict, flags: dict, device: dict, layer: str, summary: np.ndarray) -> None:
    count, mean, _, low, high, nonfinite = (float(v) for v in summary)
    scalars[(layer, r.ACT_MEAN)] = mean
    scalars[(layer, r.ACT_STD)] = _std(summary)
    scalars[(layer, r.ACT_MIN)], scalars[(layer, r.ACT_MAX)] = low, high
    scalars[(layer, r.ACT_NONFINITE_FRACTION)] = nonfinite / count if count else 0.0
    saturated = device.get((layer, probes.ACT_SATURATED))
    if saturated is not None and count:
        scalars[(layer, r.ACT_SATURATED_FRACTION)] = float(saturated) / count
    alive = device.get((layer, probes.ACT_ALIVE))
    if alive is not None and alive.size:
        scalars[(layer, r.ACT_DEAD_FRACTION)] = float(np.mean(alive == 0))
        flags[(layer, "values_per_unit")] = count / alive.size  # how many values each unit saw
    if nonfinite:
        flags[(layer, "act_nonfinite")] = nonfinite


def _input_scale(scalars: dict, flags: dict, features: np.ndarray) -> None:
    """Per-feature rms = sqrt(mean^2 + var) of the model input; features that are zero
    everywhere (padding, empty pixels) do not count as tiny."""
    count, mean, m2 = features[:, 0], features[:, 1], features[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = np.sqrt(mean * mean + np.maximum(m2, 0.0) / np.maximum(count, 1.0))
    rms = rms[np.isfinite(rms)]
    nonzero = rms[rms > 0]
    if not nonzero.size:
        return
    scalars[("", r.INPUT_RMS_MAX)] = float(nonzero.max())
    scalars[("", r.INPUT_RMS_MIN)] = float(nonzero.min())
    flags[("", "input_features")] = float(features.shape[0])


def _parameters(scalars: dict, values: StepValues) -> None:
    """Per-parameter metrics from the packed ``(P, ...)`` rows (labels name the rows)."""
    weight_std: dict[str, float] = {}
    norms: dict[str, float] = {}
    packed = [
        (parsed[0], key, array)
        for key, array in values.device.items()
        if key[0] == "" and (parsed := parse_field(key[1])) is not None
    ]
    for kind, key, array in sorted(packed, key=lambda item: item[0] != WEIGHT):
        names = values.labels.get(key, ())
        for name, row in zip(names, array):
            if kind == WEIGHT and row[0]:
                weight_std[name] = _std(row)
                scalars[(name, r.WEIGHT_STD)] = weight_std[name]
            elif kind == GRAD and row[0]:
                norms[name] = _norm(row)
                std = _std(row)
                scalars[(name, r.GRAD_STD)] = std
                scalars[(name, r.GRAD_MAX_ABS)] = float(max(-row[3], row[4]))
                if weight_std.get(name):
                    scalars[(name, r.GRAD_TO_DATA)] = std / weight_std[name]
            elif kind == GRAD_SQ:
                norms.setdefault(name, math.sqrt(max(float(row), 0.0)))
            elif kind == UPDATE and row[0] and weight_std.get(name):
                ratio = _std(row) / weight_std[name]  # -inf: a step below float resolution
                scalars[(name, r.UPDATE_TO_DATA_LOG10)] = math.log10(ratio) if ratio else -math.inf
            elif kind == ADAM and row[0]:
                count, m_abs, sqrt_v, step_sq, _ = (float(v) for v in row)
                scalars[(name, r.ADAM_M_HAT_ABS_MEAN)] = m_abs / count
                scalars[(name, r.ADAM_SQRT_V_HAT_MEAN)] = sqrt_v / count
                scalars[(name, r.ADAM_STEP_RMS)] = math.sqrt(max(step_sq, 0.0) / count)
    for name, norm in norms.items():
        scalars[(name, r.GRAD_NORM)] = norm
    if norms:
        scalars[("", r.GRAD_NORM_TOTAL)] = math.sqrt(sum(n * n for n in norms.values()))


def _norm_layer_drift(
    scalars: dict, device: dict, layer: str, block: np.ndarray, eps: float
) -> None:
    running_mean = device.get((layer, bn.BN_RUNNING_MEAN))
    running_var = device.get((layer, bn.BN_RUNNING_VAR))
    if running_mean is None or running_var is None:
        return
    count, mean, m2 = block[:, 0], block[:, 1], block[:, 2]
    batch_var = m2 / np.maximum(count, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        drift = np.abs(mean - running_mean) / np.sqrt(running_var + eps)
        log_ratio = np.log(batch_var / running_var)
    scalars[(layer, r.BN_MEAN_DRIFT)] = float(np.mean(drift))
    scalars[(layer, r.BN_VAR_LOG_RATIO)] = float(np.mean(log_ratio))
