"""Rules on gradient norms: exploding totals, vanishing weight matrices.

A weight matrix's gradient is judged "vanishing" on the median, over its last measured steps
(at least ``update_min_samples``), of its norm over the largest weight matrix's norm at the
same step: never on one sample, so a transient of the first steps (attention query/key
gradients are tiny while the attention is still uniform) is not a pathology. Adam-family
optimisers divide each element's step by its own gradient scale, so a weight whose gradient
is 1e-5 of the largest still moves at the learning rate (ConvNeXt's layer scale of 1e-6
does this by design); their threshold is lower (``vanishing_grad_ratio_adam``).
"""

from __future__ import annotations

import math
from collections import defaultdict, deque

import numpy as np

from vitalstats.monitor import registry as r
from vitalstats.monitor.diagnoses.context import RunContext
from vitalstats.monitor.metrics import StepMetrics


class GradientRule:
    needs = frozenset({r.GRAD_NORM_TOTAL, r.GRAD_NORM})  # steps without them are skipped

    def __init__(self) -> None:
        self.ratios: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=5))

    def observe(self, m: StepMetrics, ctx: RunContext) -> None:
        if ctx.poisoned(m.step):
            return
        t = ctx.thresholds
        total = m.scalars.get(("", r.GRAD_NORM_TOTAL))
        if total is not None and math.isfinite(total):
            ctx.note("grad_norm_total", total)
            if total > t.exploding_grad_norm:
                ctx.add(
                    "GRAD_EXPLODING", "", m.step,
                    f"total gradient L2 norm is {total:.4g} (threshold "
                    f"{t.exploding_grad_norm:g}).",
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
        if largest <= 0:
            return
        adam = ctx.optimizer_family == "adam"
        limit = t.vanishing_grad_ratio_adam if adam else t.vanishing_grad_ratio
        for layer in ctx.parameter_order:
            norm = norms.get(layer)
            if norm is None:
                continue
            samples = self.ratios[layer]
            samples.append(norm / largest)
            if len(samples) < t.min_samples:
                continue
            ratio = float(np.median(samples))
            ctx.note(f"grad_vanishing_ratio[{'adam' if adam else 'other'}]", ratio, worst="min")
            if ratio < limit:
                ctx.add(
                    "GRAD_VANISHING", layer, m.step,
                    f"gradient norm {norm:.3g} is {norm / largest:.2g}x the largest weight "
                    f"gradient norm {largest:.3g} (median {ratio:.2g}x over the last "
                    f"{len(samples)} measured steps; threshold {limit:g}x for this optimiser).",
                    "use ReLU-family activations with Kaiming init (vs.init), add normalisation "
                    "layers or residual connections; avoid deep sigmoid/tanh stacks.",
                )  # fmt: skip
