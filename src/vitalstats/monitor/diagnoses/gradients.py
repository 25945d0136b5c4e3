"""Rules on gradient norms: exploding totals, vanishing weight matrices."""

from __future__ import annotations

import math

from vitalstats.monitor import registry as r
from vitalstats.monitor.diagnoses.context import RunContext
from vitalstats.monitor.metrics import StepMetrics


class GradientRule:
    def observe(self, m: StepMetrics, ctx: RunContext) -> None:
        if ctx.poisoned(m.step):
            return
        t = ctx.thresholds
        total = m.scalars.get(("", r.GRAD_NORM_TOTAL))
        if total is not None and math.isfinite(total) and total > t.exploding_grad_norm:
            ctx.add(
                "GRAD_EXPLODING", "", m.step,
                f"total gradient L2 norm is {total:.4g} (threshold {t.exploding_grad_norm:g}).",
                "clip gradients (clip_grad_norm_), lower the learning rate, and check the "
                "initialisation (vs.init) and missing normalisation layers.",
            )  # fmt: skip
        matrices = ctx.matrices()
        norms = {
            layer: value
            for (layer, metric), value in m.scalars.items()
            if metric == r.GRAD_NORM and layer in matrices and math.isfinite(value)
        }
        if len(norms) < 2:
            return
        largest = max(norms.values())
        for layer in ctx.parameter_order:
            norm = norms.get(layer)
            if norm is not None and largest > 0 and norm < t.vanishing_grad_ratio * largest:
                ctx.add(
                    "GRAD_VANISHING", layer, m.step,
                    f"gradient norm {norm:.3g} is {norm / largest:.2g}x the largest weight "
                    f"gradient norm {largest:.3g} (threshold {t.vanishing_grad_ratio:g}x).",
                    "use ReLU-family activations with Kaiming init (vs.init), add "
                    "normalisation layers or residual connections; avoid deep sigmoid/tanh "
                    "stacks.",
                )  # fmt: skip
