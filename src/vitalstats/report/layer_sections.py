"""Per-layer sections: activations by depth, gradient norms, update:data, BatchNorm drift and
Adam moments. Up to ``MAX_LINES_PER_FIGURE`` layers are drawn as lines; more become one heat
map (a row per layer in forward order, a column per step), which stays readable for a
150-tensor transformer where 150 lines would not."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from vitalstats.report import plots
from vitalstats.report.collect import (
    ACT_SATURATED,
    ACT_STD,
    ACTIVATION_TYPES,
    ADAM_M_HAT,
    ADAM_SQRT_V_HAT,
    ADAM_STEP_RMS,
    BN_MEAN_DRIFT,
    BN_VAR_LOG_RATIO,
    GRAD_NORM,
    UPDATE_TO_DATA,
    RunData,
)
from vitalstats.report.heatmaps import evenly_spaced, layers_heatmap
from vitalstats.report.html import Section, figure, grid, note, table
from vitalstats.report.svgfigure import Axis, ColourScale, heatmap_figure

MAX_LINES_PER_FIGURE = 16  # more layers than this: a layer x step heat map instead of lines
MAX_ROW_LABELS = 24  # layer names on a heat map's axis; every k-th beyond


def _line(run: RunData, layer: str, metric: str, label: str) -> plots.Line:
    steps, values = run.series(layer, metric)
    return plots.Line(label, steps.astype(float), values)


def _colour_scale(values: np.ndarray, log: bool, label: str) -> ColourScale:
    """Robust limits (1st-99th percentile of the finite values; decades on a log scale)."""
    finite = values[np.isfinite(values) & ((values > 0) if log else True)]
    if not len(finite):
        return ColourScale(1e-3 if log else 0.0, 1.0, log, label)
    low, high = np.percentile(finite, [1, 99])
    if log:
        low, high = 10.0 ** math.floor(math.log10(low)), 10.0 ** math.ceil(math.log10(high))
        high = max(high, low * 10)
    elif high <= low:
        low, high = low - 0.5, high + 0.5
    return ColourScale(float(low), float(high), log, label)


def layers_heatmap_uri(
    run: RunData, layers: Sequence[str], metric: str, ylabel: str, log: bool
) -> str:
    """One metric of every layer as a heat map: first layer at the top, colour = value."""
    series = [run.series(layer, metric) for layer in reversed(layers)]  # row 0 is the bottom
    panel = layers_heatmap(
        f"{len(layers)} rows, one per layer or parameter, forward order from the top", series
    )
    scale = _colour_scale(panel.values, log, ylabel)
    labelled = evenly_spaced(list(range(len(layers))), MAX_ROW_LABELS)
    ticks = [(len(layers) - 1 - i + 0.5, layers[i]) for i in labelled]
    height = int(min(max(len(layers) * 5, 120), 600))
    return heatmap_figure(f"{run.name}: {metric}", [panel], scale, Axis("layer", ticks), height)


def per_layer_figures(
    runs: Sequence[RunData], metric: str, ylabel: str, log_y: bool, guide: float | None = None,
    guide_label: str = "",
) -> str:  # fmt: skip
    body = ""
    for run in runs:
        layers = run.layers_with(metric)
        if not layers:
            continue
        title = f"{run.name}: {metric}"
        if len(layers) > MAX_LINES_PER_FIGURE:
            uri = layers_heatmap_uri(run, layers, metric, ylabel, log_y)
            caption = (
                f"{title}: {len(layers)} layers or parameters, one row each (colour = {ylabel})"
            )
            body += figure(uri, caption)
            continue
        lines = [
            dataclasses.replace(_line(run, layer, metric, layer), dashed=layer.endswith(".bias"))
            for layer in layers
        ]
        uri = plots.lines_figure(
            lines, title, ylabel, log_y=log_y, guide=guide, guide_label=guide_label
        )
        body += figure(uri, title)
    return grid(body)


def _activation_layers(run: RunData, metric: str) -> list[str]:
    layers = run.layers_with(metric)
    activations = [name for name in layers if run.layer_type(name) in ACTIVATION_TYPES]
    return activations or layers


def depth_section(runs: Sequence[RunData]) -> Section:
    """Activation std and saturated fraction against layer position, runs overlaid."""
    std_by_run: dict[str, plots.Line] = {}
    saturation_by_run: dict[str, plots.Line] = {}
    names_by_run: dict[str, list[str]] = {}
    for run in runs:
        layers = _activation_layers(run, ACT_STD)
        if not layers:
            continue
        names_by_run[run.name] = layers
        for metric, target in ((ACT_STD, std_by_run), (ACT_SATURATED, saturation_by_run)):
            values = [run.series(layer, metric)[1] for layer in layers]
            if all(len(v) for v in values):
                last = np.array([v[-1] for v in values])
                target[run.name] = plots.Line(run.name, np.arange(len(layers), dtype=float), last)
    if not std_by_run:
        return Section("activations-by-depth", "Activations by depth",
                       note("No activation statistics recorded (act_std)."))  # fmt: skip
    layer_lists = list(names_by_run.values())
    same = all(names == layer_lists[0] for names in layer_lists)
    longest = max(layer_lists, key=len)
    ticks = longest if same else [str(i) for i in range(len(longest))]
    caption = (
        "Last recorded step. A std that shrinks or grows with depth means the init gain is wrong."
    )
    body = figure(plots.by_depth_figure(std_by_run, saturation_by_run, ticks), caption)
    if not same:
        body += table(("run", "layers by position"),
                      [(run, ", ".join(f"{i}: {n}" for i, n in enumerate(names)))
                       for run, names in names_by_run.items()])  # fmt: skip
    return Section("activations-by-depth", "Activations by depth", body)


def gradient_section(runs: Sequence[RunData]) -> Section:
    body = per_layer_figures(runs, GRAD_NORM, "gradient L2 norm", log_y=True)
    return Section("gradient-norms", "Gradient norm by layer",
                   body or note("No per-parameter gradient norms recorded (grad_norm)."))  # fmt: skip


def update_section(runs: Sequence[RunData]) -> Section:
    body = per_layer_figures(
        runs, UPDATE_TO_DATA, "log10(std(update) / std(weight))", log_y=False,
        guide=plots.UPDATE_TO_DATA_GUIDE_LOG10, guide_label="1e-3 guide",
    )  # fmt: skip
    if body:
        body = note("Around -3 (dashed) is healthy; far below, the layer barely learns; far above, "
                    "the step is too large for the weights.") + body  # fmt: skip
    return Section("update-to-data", "Update:data ratio",
                   body or note("No update:data ratios recorded (needs the optimizer)."))  # fmt: skip


def batchnorm_section(runs: Sequence[RunData]) -> Section:
    body = per_layer_figures(
        runs, BN_MEAN_DRIFT, "|batch − running mean| / running std", log_y=False
    )
    body += per_layer_figures(runs, BN_VAR_LOG_RATIO, "log(batch var / running var)", log_y=False,
                              guide=0.0)  # fmt: skip
    return Section("batchnorm-drift", "BatchNorm: batch vs running statistics",
                   body or note("No BatchNorm layers in these runs."))  # fmt: skip


def adam_section(runs: Sequence[RunData]) -> Section:
    body = ""
    for metric, ylabel in ((ADAM_M_HAT, "mean |m̂| (bias-corrected 1st moment)"),
                           (ADAM_SQRT_V_HAT, "mean sqrt(v̂) (bias-corrected 2nd moment)"),
                           (ADAM_STEP_RMS, "RMS of the Adam step lr·m̂ / (sqrt(v̂) + eps)")):  # fmt: skip
        body += per_layer_figures(runs, metric, ylabel, log_y=True)
    return Section("adam-moments", "Adam moments",
                   body or note("No Adam-family optimiser moments recorded."))  # fmt: skip
