"""Diagnoses: what the measured numbers mean, as ``Finding`` records.

``Diagnoser.observe`` reads the named metrics of each flushed step in order (host floats
only) and ``norm_layer_runtime`` checks a BatchNorm's Python state during its forward. Every
threshold is a named field of ``Thresholds``; docs/monitor.md has the table of codes.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from vitalstats.monitor.config import Thresholds
from vitalstats.monitor.findings import Finding, FindingLog, make_finding
from vitalstats.monitor.metrics import StepMetrics
from vitalstats.monitor.norm_layers import (
    frozen_but_updating,
    uses_batch_statistics,
    values_per_channel,
)


class Diagnoser:
    """Stateful rules over the stream of ``StepMetrics`` (loss EWM, first NaN, windows)."""

    def __init__(self, thresholds: Thresholds, loss_ewm_beta: float, log: FindingLog) -> None:
        from vitalstats.stats import EMVar

        self.t = thresholds
        self.log = log
        self.loss_ewm = EMVar(loss_ewm_beta)
        self.best_loss_ewm = math.inf
        self.nonfinite_reported = False
        self.forward_order: list[str] = []  # watched layers in the order they first ran
        self.weighted_layers: set[str] = set()  # Linear/Conv-like layers (for depth trends)
        self.matrix_parameters: set[str] = set()  # parameters with ndim >= 2
        self.parameter_order: list[str] = []

    # ----------------------------------------------------------------------------- per step
    def observe(self, m: StepMetrics) -> None:
        """Run every per-step rule on one step; adds ``loss_ewm_mean/std`` to its scalars."""
        self._nonfinite(m)
        self._loss(m)
        self._gradients(m)
        self._activations(m)
        self._norm_layers(m)

    def observe_window(self, window: list[StepMetrics]) -> None:
        """Rules on the median of a flush window (update:data is noisy step to step)."""
        ratios: dict[str, list[float]] = defaultdict(list)
        for m in window:
            for (layer, metric), value in m.scalars.items():
                if metric == "update_to_data_log10" and layer in self.matrix_parameters:
                    ratios[layer].append(value)
        if not window:
            return
        step = window[-1].step
        for layer, values in ratios.items():
            median = float(np.median(values))
            if median < self.t.update_to_data_log10_low:
                self._add(
                    "UPDATE_RATIO_LOW",
                    layer,
                    step,
                    f"median log10(std(update)/std(weight)) is {median:.2f} over the "
                    f"last {len(values)} measured steps (threshold "
                    f"{self.t.update_to_data_log10_low}; about -3 is healthy).",
                    "raise the learning rate for this layer (or check it is not frozen "
                    "by a tiny lr / huge weight decay).",
                )
            elif median > self.t.update_to_data_log10_high:
                self._add(
                    "UPDATE_RATIO_HIGH",
                    layer,
                    step,
                    f"median log10(std(update)/std(weight)) is {median:.2f} over the "
                    f"last {len(values)} measured steps (threshold "
                    f"{self.t.update_to_data_log10_high}; about -3 is healthy).",
                    "lower the learning rate (or add warm-up); each step rewrites a "
                    "large part of the weights.",
                )

    def _add(self, code: str, layer: str, step: int | None, message: str, fix: str) -> None:
        self.log.add(make_finding(code, layer, step, message, fix))

    def _nonfinite(self, m: StepMetrics) -> None:
        if self.nonfinite_reported:
            return
        bad_input = m.flags.get(("", "input_bad_index"))
        if bad_input is not None:
            where = (
                f"at batch index {int(bad_input)} (first bad sample of the (micro-)batch)"
                if bad_input >= 0
                else "on another distributed rank"
            )
            self._add(
                "NONFINITE_INPUT",
                "",
                m.step,
                f"the model's input held NaN/Inf {where}.",
                "check the data pipeline for that sample (division by zero, log of 0, "
                "corrupt file); vs.data.Standardize reports non-finite inputs.",
            )
            self.nonfinite_reported = True
            return
        for layer in self.forward_order:
            if m.flags.get((layer, "nonfinite"), 0.0) > 0:
                self._add(
                    "NONFINITE_FORWARD",
                    layer,
                    m.step,
                    "this is the first checked layer (in forward order) whose output held "
                    "NaN/Inf while the model input was finite (layers that cannot create "
                    "NaN/Inf, such as ReLU, pooling or Flatten, are not checked). If its "
                    "weights turned NaN in the previous update, a gradient was the source: "
                    "grad_norm_every=1 pinpoints it (NONFINITE_GRAD).",
                    "look at this layer's input range and weights (log/sqrt/div of "
                    "non-positive values, overflow in float16 -> use bfloat16 or a "
                    "GradScaler, a learning rate that blew the weights up).",
                )
                self.nonfinite_reported = True
                return
        loss = m.scalars.get(("", "loss"))
        if loss is not None and not math.isfinite(loss):
            self._add(
                "NONFINITE_LOSS",
                "",
                m.step,
                f"the loss is {loss}.",
                "check the loss inputs (log of 0: use log_softmax / the *WithLogits "
                "losses) and lower the learning rate.",
            )
            self.nonfinite_reported = True
            return
        for layer in reversed(self.parameter_order):  # backward runs last layer first
            norm = m.scalars.get((layer, "grad_norm"))
            if norm is not None and not math.isfinite(norm):
                self._add(
                    "NONFINITE_GRAD",
                    layer,
                    m.step,
                    "the forward pass was finite but this parameter's gradient held "
                    "NaN/Inf (the deepest such parameter: backward starts there).",
                    "clip gradients (torch.nn.utils.clip_grad_norm_), use a GradScaler "
                    "under float16, and check custom backward code / sqrt(0).",
                )
                self.nonfinite_reported = True
                return

    def _loss(self, m: StepMetrics) -> None:
        loss = m.scalars.get(("", "loss"))
        if loss is None or not math.isfinite(loss):
            return
        warm = self.loss_ewm.step >= self.t.loss_warmup_steps
        if warm:
            mean, std = float(self.loss_ewm.mean), float(self.loss_ewm.std)
            if std > 0 and (loss - mean) / std > self.t.loss_spike_sigmas:
                self._add(
                    "LOSS_SPIKE",
                    "",
                    m.step,
                    f"loss {loss:.4g} is {(loss - mean) / std:.1f} EWM standard deviations "
                    f"above its EWM mean {mean:.4g} (threshold {self.t.loss_spike_sigmas}).",
                    "look for a bad batch at this step; if spikes recur lower the learning "
                    "rate, add warm-up or clip gradients.",
                )
        self.loss_ewm.update(loss)
        ewm_mean, ewm_std = float(self.loss_ewm.mean), float(self.loss_ewm.std)
        m.scalars[("", "loss_ewm_mean")] = ewm_mean
        m.scalars[("", "loss_ewm_std")] = ewm_std
        if not warm:
            return
        if ewm_mean > 0 and self.best_loss_ewm > 0:
            ratio = ewm_mean / self.best_loss_ewm
            if self.best_loss_ewm != math.inf and ratio > self.t.loss_divergence_ratio:
                self._add(
                    "LOSS_DIVERGENCE",
                    "",
                    m.step,
                    f"the loss EWM mean {ewm_mean:.4g} is {ratio:.1f}x its best value "
                    f"{self.best_loss_ewm:.4g} (threshold {self.t.loss_divergence_ratio}x).",
                    "lower the learning rate (divergence usually means it is too high), "
                    "add warm-up or gradient clipping.",
                )
        self.best_loss_ewm = min(self.best_loss_ewm, ewm_mean)

    def _gradients(self, m: StepMetrics) -> None:
        total = m.scalars.get(("", "grad_norm_total"))
        if total is not None and math.isfinite(total) and total > self.t.exploding_grad_norm:
            self._add(
                "GRAD_EXPLODING",
                "",
                m.step,
                f"total gradient L2 norm is {total:.4g} (threshold "
                f"{self.t.exploding_grad_norm:g}).",
                "clip gradients (clip_grad_norm_), lower the learning rate, and check the "
                "initialisation (vs.init) and missing normalisation layers.",
            )
        norms = {
            layer: value
            for (layer, metric), value in m.scalars.items()
            if metric == "grad_norm" and layer in self.matrix_parameters and math.isfinite(value)
        }
        if len(norms) < 2:
            return
        largest = max(norms.values())
        for layer in self.parameter_order:
            norm = norms.get(layer)
            if norm is not None and largest > 0 and norm < self.t.vanishing_grad_ratio * largest:
                self._add(
                    "GRAD_VANISHING",
                    layer,
                    m.step,
                    f"gradient norm {norm:.3g} is {norm / largest:.2g}x the largest weight "
                    f"gradient norm {largest:.3g} (threshold "
                    f"{self.t.vanishing_grad_ratio:g}x).",
                    "use ReLU-family activations with Kaiming init (vs.init), add "
                    "normalisation layers or residual connections; avoid deep "
                    "sigmoid/tanh stacks.",
                )

    def _activations(self, m: StepMetrics) -> None:
        stds = []
        for layer in self.forward_order:
            saturated = m.scalars.get((layer, "act_saturated_fraction"))
            if saturated is not None and saturated > self.t.saturated_fraction:
                self._add(
                    "ACT_SATURATED",
                    layer,
                    m.step,
                    f"{saturated:.1%} of outputs have |y| > {self.t.saturation_level} "
                    f"(tanh units; threshold {self.t.saturated_fraction:.0%}); their "
                    "gradient is nearly zero.",
                    "shrink the preceding layer's init (Xavier/Kaiming with the tanh gain "
                    "5/3), add a normalisation layer before the activation, lower the lr.",
                )
            dead = m.scalars.get((layer, "act_dead_fraction"))
            seen = m.flags.get((layer, "values_per_unit"), 0.0)  # tiny batches: zero by chance
            if dead is not None and dead > self.t.dead_fraction and seen >= self.t.dead_min_values:
                self._add(
                    "DEAD_RELU",
                    layer,
                    m.step,
                    f"{dead:.1%} of units output zero for the whole batch (threshold "
                    f"{self.t.dead_fraction:.0%}); they get no gradient.",
                    "lower the learning rate, use Kaiming init and a non-negative bias "
                    "init, or LeakyReLU/GELU.",
                )
            std = m.scalars.get((layer, "act_std"))
            if layer in self.weighted_layers and std is not None and math.isfinite(std):
                stds.append((layer, std))
        hidden = stds[:-1]  # the output layer's scale is a design choice
        if len(hidden) >= 2 and hidden[0][1] > 0:
            ratio = hidden[-1][1] / hidden[0][1]
            per_layer = ratio ** (1.0 / (len(hidden) - 1))  # geometric mean per layer
            limit, per_limit = self.t.depth_std_ratio, self.t.per_layer_std_ratio
            too_far = len(hidden) >= 3 and (ratio > limit or ratio < 1 / limit)
            too_steep = per_layer > per_limit or per_layer < 1 / per_limit
            if too_far or too_steep:
                trend = "grows" if ratio > 1 else "shrinks"
                self._add(
                    "ACT_STD_DEPTH",
                    hidden[-1][0],
                    m.step,
                    f"activation std {trend} with depth: {hidden[0][1]:.3g} after "
                    f"{hidden[0][0]} -> {hidden[-1][1]:.3g} after {hidden[-1][0]} "
                    f"({ratio:.3g}x over {len(hidden)} layers, {per_layer:.3g}x per layer; "
                    f"thresholds {limit:g}x in all, {per_limit:g}x per layer).",
                    "initialise for the nonlinearity (vs.init: Kaiming gain sqrt(2) for "
                    "ReLU, 5/3 for tanh; torch's default Linear init shrinks the std "
                    "about sqrt(3)x per layer) or add normalisation layers.",
                )

    def _norm_layers(self, m: StepMetrics) -> None:
        for (layer, metric), value in m.flags.items():
            if metric == "bn_running_nonfinite" and value > 0:
                self._add(
                    "BN_RUNNING_NONFINITE",
                    layer,
                    m.step,
                    "running_mean/running_var hold NaN/Inf; every eval-mode forward now "
                    "outputs NaN, and the momentum update never recovers.",
                    "reload the buffers from a checkpoint (or reset_running_stats() and "
                    "re-estimate with vs.nn.PreciseBN); find the NaN batch (under float16 "
                    "use a GradScaler or bfloat16).",
                )
        if m.step < self.t.bn_warmup_steps:
            return
        for (layer, metric), drift in m.scalars.items():
            if metric != "bn_mean_drift":
                continue
            log_ratio = m.scalars.get((layer, "bn_var_log_ratio"), 0.0)
            if drift > self.t.bn_mean_drift or abs(log_ratio) > self.t.bn_var_log_ratio:
                self._add(
                    "BN_DRIFT",
                    layer,
                    m.step,
                    f"batch statistics are far from the running ones: mean drift "
                    f"{drift:.3g} running stds (threshold {self.t.bn_mean_drift}), "
                    f"log(var_batch/var_running) {log_ratio:.3g} (threshold "
                    f"+-{self.t.bn_var_log_ratio}); eval-mode outputs will differ "
                    "from training ones.",
                    "check the input distribution for a shift, raise momentum (PyTorch "
                    "convention: higher adapts faster) or re-estimate the running stats "
                    "(vs.nn.PreciseBN) before evaluating.",
                )


def norm_layer_runtime(
    name: str,
    module: nn.Module,
    x: torch.Tensor,
    step: int,
    evaluating: bool,
    thresholds: Thresholds,
) -> list[Finding]:
    """Misuse visible in one BatchNorm forward, from Python state only (no device work)."""
    found = []
    if module.training and (evaluating or not torch.is_grad_enabled()):
        where = "inside Monitor.evaluating()" if evaluating else "under torch.no_grad()"
        found.append(
            make_finding(
                "BN_TRAIN_IN_EVAL",
                name,
                step,
                f"forward {where} with the layer in training mode: it normalises with this batch's "
                "statistics and overwrites the running statistics with evaluation data.",
                "call model.eval() before evaluating and model.train() after.",
            )
        )
    if uses_batch_statistics(module):
        per_channel = values_per_channel(module, x)
        if module.training and per_channel < thresholds.bn_min_values_per_channel:
            found.append(
                make_finding(
                    "BN_FEW_VALUES",
                    name,
                    step,
                    f"batch statistics come from {per_channel} value(s) per channel (input shape "
                    f"{tuple(x.shape)}; threshold {thresholds.bn_min_values_per_channel}); "
                    "they are too noisy to normalise with.",
                    "use a larger batch, GroupNorm/LayerNorm (batch-independent), or SyncBatchNorm "
                    "across devices.",
                )
            )
        if not module.training:
            found.append(
                make_finding(
                    "BN_BATCH_STATS_AT_INFERENCE",
                    name,
                    step,
                    "in eval mode this layer has no running statistics, so inference normalises "
                    "with the batch's own statistics (outputs depend on the other samples).",
                    "construct it with track_running_stats=True, train, then model.eval().",
                )
            )
    if frozen_but_updating(module):
        found.append(
            make_finding(
                "BN_FROZEN_BUT_UPDATING",
                name,
                step,
                "weight/bias have requires_grad=False but the layer is in training mode, so its "
                "running statistics keep changing (a fine-tuning surprise).",
                "put frozen BatchNorm layers in eval mode after every model.train() (or "
                "momentum=0), or unfreeze them.",
            )
        )
    return found
