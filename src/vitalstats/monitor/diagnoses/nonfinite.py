"""The first NaN/Inf of a run: in the input, a layer's output, the loss or a gradient."""

from __future__ import annotations

import math

from vitalstats.monitor import registry as r
from vitalstats.monitor.diagnoses.context import RunContext
from vitalstats.monitor.metrics import StepMetrics


def step_is_nonfinite(m: StepMetrics) -> bool:
    """Any NaN/Inf measured at this step (input, layer sentinel, activations, loss, grads)."""
    if ("", "input_bad_index") in m.flags:
        return True
    if any(v > 0 for (_, name), v in m.flags.items() if name in ("nonfinite", "act_nonfinite")):
        return True
    loss = m.scalars.get(("", r.LOSS))
    if loss is not None and not math.isfinite(loss):
        return True
    return any(
        not math.isfinite(v)
        for (_, name), v in m.scalars.items()
        if name in (r.GRAD_NORM, r.GRAD_NORM_TOTAL)
    )


class NonFiniteRule:
    """Reports where the first non-finite value appeared, once per run."""

    def __init__(self) -> None:
        self.reported = False

    def observe(self, m: StepMetrics, ctx: RunContext) -> None:
        if ctx.nonfinite_step is None and step_is_nonfinite(m):
            ctx.nonfinite_step = m.step
        if self.reported:
            return
        self.reported = self._first_event(m, ctx)

    def _first_event(self, m: StepMetrics, ctx: RunContext) -> bool:
        bad_input = m.flags.get(("", "input_bad_index"))
        if bad_input is not None:
            where = (
                f"at batch index {int(bad_input)} (first bad sample of the (micro-)batch)"
                if bad_input >= 0
                else "on another distributed rank"
            )
            ctx.add(
                "NONFINITE_INPUT", "", m.step, f"the model's input held NaN/Inf {where}.",
                "check the data pipeline for that sample (division by zero, log of 0, corrupt "
                "file); vs.data.Standardize reports non-finite inputs.",
            )  # fmt: skip
            return True
        for layer in ctx.forward_order:
            if m.flags.get((layer, "nonfinite"), 0.0) > 0:
                ctx.add(
                    "NONFINITE_FORWARD", layer, m.step,
                    "this is the first checked layer (in forward order) whose output held "
                    "NaN/Inf while the model input was finite (layers that cannot create "
                    "NaN/Inf, such as ReLU, pooling or Flatten, are not checked). If its "
                    "weights turned NaN in the previous update, a gradient was the source: "
                    "grad_norm_every=1 pinpoints it (NONFINITE_GRAD).",
                    "look at this layer's input range and weights (log/sqrt/div of "
                    "non-positive values, overflow in float16 -> use bfloat16 or a "
                    "GradScaler, a learning rate that blew the weights up).",
                )  # fmt: skip
                return True
        loss = m.scalars.get(("", r.LOSS))
        if loss is not None and not math.isfinite(loss):
            ctx.add(
                "NONFINITE_LOSS", "", m.step, f"the loss is {loss}.",
                "check the loss inputs (log of 0: use log_softmax / the *WithLogits losses) "
                "and lower the learning rate.",
            )  # fmt: skip
            return True
        for layer in reversed(ctx.parameter_order):  # backward runs last layer first
            norm = m.scalars.get((layer, r.GRAD_NORM))
            if norm is not None and not math.isfinite(norm):
                ctx.add(
                    "NONFINITE_GRAD", layer, m.step,
                    "the forward pass was finite but this parameter's gradient held NaN/Inf "
                    "(the deepest such parameter: backward starts there).",
                    "clip gradients (torch.nn.utils.clip_grad_norm_), use a GradScaler under "
                    "float16, and check custom backward code / sqrt(0).",
                )  # fmt: skip
                return True
        return False
