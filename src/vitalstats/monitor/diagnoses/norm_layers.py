"""BatchNorm rules: misuse seen by the hooks, drift from the running statistics, poisoned
buffers, buffers that differ across ranks."""

from __future__ import annotations

from vitalstats.monitor import norm_layers as bn
from vitalstats.monitor import registry as r
from vitalstats.monitor.diagnoses.context import RunContext
from vitalstats.monitor.linting import bias_before_norm_finding
from vitalstats.monitor.metrics import StepMetrics
from vitalstats.monitor.state import Observation


def from_observation(o: Observation, ctx: RunContext) -> None:
    t = ctx.thresholds
    if o.kind == "bn_train_in_eval":
        ctx.add(
            "BN_TRAIN_IN_EVAL", o.layer, o.step,
            f"forward {o.data['where']} with the layer in training mode: it normalises with "
            "this batch's statistics and overwrites the running statistics with evaluation "
            "data.",
            "call model.eval() before evaluating and model.train() after.",
        )  # fmt: skip
    elif o.kind == "bn_values_per_channel" and o.data["values"] < t.bn_min_values_per_channel:
        ctx.add(
            "BN_FEW_VALUES", o.layer, o.step,
            f"batch statistics come from {o.data['values']} value(s) per channel (input shape "
            f"{o.data['shape']}; threshold {t.bn_min_values_per_channel}); they are too noisy "
            "to normalise with.",
            "use a larger batch, GroupNorm/LayerNorm (batch-independent), or SyncBatchNorm "
            "across devices.",
        )  # fmt: skip
    elif o.kind == "bn_batch_stats_at_inference":
        ctx.add(
            "BN_BATCH_STATS_AT_INFERENCE", o.layer, o.step,
            "in eval mode this layer has no running statistics, so inference normalises with "
            "the batch's own statistics (outputs depend on the other samples).",
            "construct it with track_running_stats=True, train, then model.eval().",
        )  # fmt: skip
    elif o.kind == "bn_frozen_but_updating":
        ctx.add(
            "BN_FROZEN_BUT_UPDATING", o.layer, o.step,
            "weight/bias have requires_grad=False but the layer is in training mode, so its "
            "running statistics keep changing (a fine-tuning surprise).",
            "put frozen BatchNorm layers in eval mode after every model.train() (or "
            "momentum=0), or unfreeze them.",
        )  # fmt: skip
    elif o.kind == "bias_before_norm":
        ctx.log.add(bias_before_norm_finding(o.layer, o.data["norm"]))


class NormLayerRule:
    def observe(self, m: StepMetrics, ctx: RunContext) -> None:
        t = ctx.thresholds
        for (layer, metric), value in m.flags.items():
            if metric == bn.BN_RUNNING_NONFINITE and value > 0:
                ctx.add(
                    "BN_RUNNING_NONFINITE", layer, m.step,
                    "running_mean/running_var hold NaN/Inf; every eval-mode forward now outputs "
                    "NaN, and the momentum update never recovers.",
                    "reload the buffers from a checkpoint (or reset_running_stats() and "
                    "re-estimate with vs.nn.PreciseBN); find the NaN batch (under float16 use a "
                    "GradScaler or bfloat16).",
                )  # fmt: skip
        if m.step < t.bn_warmup_steps or ctx.poisoned(m.step):
            return
        for (layer, metric), drift in m.scalars.items():
            if metric != r.BN_MEAN_DRIFT:
                continue
            log_ratio = m.scalars.get((layer, r.BN_VAR_LOG_RATIO), 0.0)
            if drift > t.bn_mean_drift or abs(log_ratio) > t.bn_var_log_ratio:
                ctx.add(
                    "BN_DRIFT", layer, m.step,
                    f"batch statistics are far from the running ones: mean drift {drift:.3g} "
                    f"running stds (threshold {t.bn_mean_drift}), log(var_batch/var_running) "
                    f"{log_ratio:.3g} (threshold +-{t.bn_var_log_ratio}); eval-mode outputs "
                    "will differ from training ones.",
                    "check the input distribution for a shift, raise momentum (PyTorch "
                    "convention: higher adapts faster) or re-estimate the running stats "
                    "(vs.nn.PreciseBN) before evaluating.",
                )  # fmt: skip


def buffer_divergence(spreads: dict[str, float], step: int, ctx: RunContext) -> None:
    """``vs.nn.check_buffer_divergence`` results (layer -> spread across ranks)."""
    limit = ctx.thresholds.bn_buffer_divergence
    for name, spread in spreads.items():
        if spread > limit:
            ctx.add(
                "BN_BUFFER_DIVERGENCE", name, step,
                f"running statistics differ across ranks by {spread:.3g} (max of mean spread "
                f"in running stds and log variance ratio; threshold {limit}).",
                "keep DDP's broadcast_buffers=True, use SyncBatchNorm, or all-reduce the buffers "
                "(vs.nn) before evaluating or saving.",
            )  # fmt: skip
