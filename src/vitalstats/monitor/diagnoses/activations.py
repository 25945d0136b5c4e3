"""Rules on activation statistics: saturation, dead units, the std trend with depth."""

from __future__ import annotations

import math

from vitalstats.monitor import registry as r
from vitalstats.monitor.diagnoses.context import RunContext
from vitalstats.monitor.metrics import StepMetrics


def depth_chains(ctx: RunContext) -> list[list[str]]:
    """Chains of weighted layers (no embeddings), each feeding the next through single-input
    operations only (``ctx.links``, from the autograd graph), in forward order. Layers whose
    outputs are added together (embeddings, residual branches) are not linked."""
    order = [layer for layer in ctx.forward_order if layer in ctx.weighted_layers]
    position = {layer: i for i, layer in enumerate(order)}
    chains: list[list[str]] = []
    chain_of: dict[str, list[str]] = {}
    for layer in order:
        upstream = ctx.links.get(layer)
        chain = chain_of.get(upstream) if upstream in position else None
        if chain is not None and chain[-1] == upstream:
            chain.append(layer)
        else:
            chain = [layer]
            chains.append(chain)
        chain_of[layer] = chain
    return chains


class ActivationRule:
    needs = frozenset({r.ACT_MIN, r.ACT_MAX, r.ACT_STD, r.ACT_SATURATED_FRACTION,
                       r.ACT_DEAD_FRACTION})  # fmt: skip

    def __init__(self) -> None:
        self.head_values: list[tuple[int, float]] = []  # (step, max |logit|)

    def observe(self, m: StepMetrics, ctx: RunContext) -> None:
        if ctx.poisoned(m.step):
            return
        self._logits(m, ctx)
        t = ctx.thresholds
        first_relu_dead = False
        for layer in ctx.forward_order:
            saturated = m.scalars.get((layer, r.ACT_SATURATED_FRACTION))
            if saturated is not None:
                ctx.note("saturated_fraction", saturated)
                if saturated > t.saturated_fraction:
                    ctx.add(
                        "ACT_SATURATED", layer, m.step,
                        f"{saturated:.1%} of outputs have |y| > {t.saturation_level} (|2y - 1| "
                        f"for a sigmoid; threshold {t.saturated_fraction:.0%}); their gradient "
                        "is nearly zero.",
                        "shrink the preceding layer's init (Xavier/Kaiming with the tanh gain "
                        "5/3), add a normalisation layer before the activation, lower the lr.",
                    )  # fmt: skip
            dead = m.scalars.get((layer, r.ACT_DEAD_FRACTION))
            seen = m.flags.get((layer, "values_per_unit"), 0.0)  # tiny batches: zero by chance
            if dead is not None and seen >= t.dead_min_values:
                ctx.note("dead_fraction", dead)
                if dead > t.dead_fraction:
                    first_relu_dead = first_relu_dead or layer == self._first_relu(m, ctx)
                    ctx.add(
                        "DEAD_RELU", layer, m.step,
                        f"{dead:.1%} of units output zero for the whole batch (threshold "
                        f"{t.dead_fraction:.0%}); they get no gradient.",
                        "lower the learning rate, use Kaiming init and a non-negative bias "
                        "init, or LeakyReLU/GELU.",
                    )  # fmt: skip
        if not first_relu_dead:  # dead first units shrink everything after them: not a depth trend
            self._depth(m, ctx)

    @staticmethod
    def _first_relu(m: StepMetrics, ctx: RunContext) -> str | None:
        return next((x for x in ctx.forward_order if (x, r.ACT_DEAD_FRACTION) in m.scalars), None)

    def _logits(self, m: StepMetrics, ctx: RunContext) -> None:
        """LOGIT_GROWTH (Wortsman et al. 2023): the output layer's values keep growing until
        the softmax saturates; measured on the last weighted layer to run (the head)."""
        head = next((x for x in reversed(ctx.forward_order) if x in ctx.weighted_layers), None)
        if head is None:
            return
        low, high = m.scalars.get((head, r.ACT_MIN)), m.scalars.get((head, r.ACT_MAX))
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            return
        value = max(-low, high)
        self.head_values.append((m.step, value))
        ctx.note("logit_abs_max", value)
        t = ctx.thresholds
        values = [v for _, v in self.head_values]
        if len(values) < 4 or value < t.logit_abs_limit:
            return
        middle = values[len(values) // 2]
        rising = values[-3] < values[-2] < values[-1]
        if rising and value > t.logit_growth * middle:
            first_step, first = self.head_values[0]
            ctx.add(
                "LOGIT_GROWTH", head, m.step,
                f"the output layer's values keep growing: max |logit| {first:.3g} at step "
                f"{first_step}, {middle:.3g} mid-run, {value:.3g} now (threshold "
                f"{t.logit_abs_limit:g}, still rising); the softmax saturates and the loss stops "
                "responding to the logits.",
                "add a z-loss (1e-4 * logsumexp(logits)^2), a final normalisation before the head, "
                "weight decay on the head, or lower the learning rate.",
            )  # fmt: skip

    def _depth(self, m: StepMetrics, ctx: RunContext) -> None:
        t = ctx.thresholds
        last = next((x for x in reversed(ctx.forward_order) if x in ctx.weighted_layers), None)
        for chain in depth_chains(ctx):
            stds = [
                (layer, std)
                for layer in chain
                if (std := m.scalars.get((layer, r.ACT_STD))) is not None and math.isfinite(std)
            ]
            if stds and stds[-1][0] == last:
                hidden = stds[:-1]  # the output layer's scale is a design choice
                minimum = 2
            else:
                hidden = stds  # an inner chain: judge it only when it is deep enough
                minimum = 3
            if len(hidden) < minimum or hidden[0][1] <= 0:
                continue
            ratio = hidden[-1][1] / hidden[0][1]
            per_layer = ratio ** (1.0 / (len(hidden) - 1))  # geometric mean per layer
            ctx.note(
                "depth_per_layer_log10", abs(math.log10(per_layer)) if per_layer > 0 else math.inf
            )
            limit, per_limit = t.depth_std_ratio, t.per_layer_std_ratio
            too_far = len(hidden) >= 3 and (ratio > limit or ratio < 1 / limit)
            too_steep = per_layer > per_limit or per_layer < 1 / per_limit
            if too_far or too_steep:
                trend = "grows" if ratio > 1 else "shrinks"
                ctx.add(
                    "ACT_STD_DEPTH", hidden[-1][0], m.step,
                    f"activation std {trend} with depth: {hidden[0][1]:.3g} after "
                    f"{hidden[0][0]} -> {hidden[-1][1]:.3g} after {hidden[-1][0]} "
                    f"({ratio:.3g}x over {len(hidden)} layers, {per_layer:.3g}x per layer; "
                    f"thresholds {limit:g}x in all, {per_limit:g}x per layer).",
                    "initialise for the nonlinearity (vs.init: Kaiming gain sqrt(2) for ReLU, "
                    "5/3 for tanh; torch's default Linear init shrinks the std about sqrt(3)x "
                    "per layer) or add normalisation layers.",
                )  # fmt: skip
