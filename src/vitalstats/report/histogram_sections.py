"""Histogram sections: activation and gradient histograms at chosen steps (the makemore
figure, one curve per layer) and over the whole run (heat maps, one panel per layer, one
figure per layer group: fastai's "colorful dimension" plot)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vitalstats.report import plots
from vitalstats.report.collect import (
    ACT_HIST,
    ACT_MEAN,
    ACT_NONFINITE,
    ACT_SATURATED,
    ACT_STD,
    ACTIVATION_TYPES,
    GRAD_HIST,
    GRAD_NORM,
    NORM_TYPES,
    WEIGHTED_TYPES,
    RunData,
)
from vitalstats.report.heatmaps import HeatMap, evenly_spaced, histogram_heatmap
from vitalstats.report.html import figure, grid, note
from vitalstats.report.svgfigure import Axis, ColourScale, heatmap_figure, nice_ticks

MAX_CURVES_PER_FIGURE = 24  # histograms at one step, one curve per layer
MAX_PANELS_PER_FIGURE = 8  # heat-map panels per layer group (evenly spaced by depth beyond)
SHARE_FLOOR = 1e-4  # lowest share on the colour scale: 1 value in 10^4 (8192 are sampled)


# ---- layer groups ---------------------------------------------------------------------------
def activation_groups(run: RunData, layers: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Watched modules by what their output is: activation functions, weighted layers
    (pre-activations), normalisation layers, then the rest; forward order inside a group."""
    named = {"activation functions": [], "weighted layers (pre-activations)": [],
             "normalisation layers": [], "other layers": []}  # fmt: skip
    keys = list(named)
    for layer in layers:
        kind = run.layer_type(layer)
        key = (0 if kind in ACTIVATION_TYPES else 1 if kind in WEIGHTED_TYPES
               else 2 if kind in NORM_TYPES else 3)  # fmt: skip
        named[keys[key]].append(layer)
    return [(title, members) for title, members in named.items() if members]


def parameter_groups(run: RunData, parameters: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Parameters by role: weights, biases, normalisation gains and shifts, the rest."""
    named = {"weights": [], "biases": [], "normalisation parameters": [], "other parameters": []}
    keys = list(named)
    for parameter in parameters:
        leaf = parameter.rpartition(".")[2]
        key = (2 if run.layer_type(parameter) in NORM_TYPES else 0 if leaf == "weight"
               else 1 if leaf == "bias" else 3)  # fmt: skip
        named[keys[key]].append(parameter)
    return [(title, members) for title, members in named.items() if members]


def _label(run: RunData, position: int, layer: str) -> str:
    kind = run.layer_type(layer)
    return f"{position}: {layer}" + (f" ({kind})" if kind else "")


# ---- histograms at chosen steps -------------------------------------------------------------
def _nearest(available: Sequence[int], wanted: int) -> int:
    return min(available, key=lambda step: (abs(step - wanted), step))


def histogram_steps(available: Sequence[int], requested: Sequence[int] | None) -> list[int]:
    """The steps to draw: the requested ones (nearest recorded), else the first and the last."""
    if not available:
        return []
    available = sorted(available)
    if requested:
        return list(dict.fromkeys(_nearest(available, step) for step in requested))
    return list(dict.fromkeys([available[0], available[-1]]))


def _activation_layers(run: RunData) -> list[str]:
    layers = run.layers_with(ACT_HIST, "histogram")
    activations = [name for name in layers if run.layer_type(name) in ACTIVATION_TYPES]
    return evenly_spaced(activations or layers, MAX_CURVES_PER_FIGURE)


def _gradient_parameters(run: RunData) -> list[str]:
    parameters = run.layers_with(GRAD_HIST, "histogram")
    if len(parameters) > MAX_CURVES_PER_FIGURE:
        weights = [p for p in parameters if p.endswith(".weight")]
        parameters = weights if len(weights) > 1 else parameters
    return evenly_spaced(parameters, MAX_CURVES_PER_FIGURE)


def _at_step(run: RunData, names: Sequence[str], metric: str, step: int, summary: bool):
    curves = []
    for position, name in enumerate(names):
        by_step = {s: (e, c) for s, e, c in run.histograms(name, metric)}
        if not by_step:
            continue
        nearest = _nearest(list(by_step), step)
        label = _label(run, position, name) + (_summary(run, name, nearest) if summary else "")
        curves.append(plots.Histogram(label, *by_step[nearest]))
    return curves


def _value_at(run: RunData, layer: str, metric: str, step: int) -> float | None:
    steps, values = run.series(layer, metric)
    if len(steps) == 0:
        return None
    return float(values[np.argmin(np.abs(steps - step))])


def _summary(run: RunData, layer: str, step: int) -> str:
    parts = []
    for metric, label, fmt in ((ACT_MEAN, "mean", "{:+.2f}"), (ACT_STD, "std", "{:.2f}"),
                               (ACT_SATURATED, "saturated", "{:.1%}")):  # fmt: skip
        value = _value_at(run, layer, metric, step)
        if value is not None and np.isfinite(value):
            parts.append(f"{label} {fmt.format(value)}")
    return (": " + ", ".join(parts)) if parts else ""


def histograms_section_body(runs: Sequence[RunData], requested: Sequence[int] | None) -> str:
    """Per run and chosen step: activations (one density curve per layer) beside gradients
    (density of log10 |g| per parameter)."""
    body = ""
    for run in runs:
        layers, parameters = _activation_layers(run), _gradient_parameters(run)
        reference = layers[0] if layers else (parameters[0] if parameters else None)
        if reference is None:
            continue
        metric = ACT_HIST if layers else GRAD_HIST
        available = sorted({s for s, _, _ in run.histograms(reference, metric)})
        for step in histogram_steps(available, requested):
            if layers:
                title = f"{run.name}: activations at step {step}"
                curves = _at_step(run, layers, ACT_HIST, step, summary=True)
                body += figure(plots.histograms_figure(curves, title), title)
            if parameters:
                title = f"{run.name}: gradients at step {step}"
                curves = _at_step(run, parameters, GRAD_HIST, step, summary=False)
                uri = plots.histograms_figure(curves, title, xlabel="log10 |gradient|")
                body += figure(uri, title)
    return grid(body)


# ---- histograms over time (heat maps) ---------------------------------------------------------
def _nonfinite_steps(run: RunData, layer: str, metric: str, positive_means_bad: bool) -> np.ndarray:
    steps, values = run.series(layer, metric)
    bad = ~np.isfinite(values)
    if positive_means_bad:
        bad |= np.nan_to_num(values, nan=0.0) > 0
    return steps[bad].astype(np.float64)


def _heatmap_figures(
    run: RunData, metric: str, groups: list[tuple[str, list[str]]], axis: Axis, what: str,
    marks_from: tuple[str, bool],
) -> str:  # fmt: skip
    scale = ColourScale(SHARE_FLOOR, 1.0, log=True, label="share of values")
    order = {name: i for i, name in enumerate(name for _, members in groups for name in members)}
    body = ""
    for title, members in groups:
        shown = evenly_spaced(members, MAX_PANELS_PER_FIGURE)
        panels: list[HeatMap] = []
        for name in shown:
            marks = _nonfinite_steps(run, name, *marks_from)
            panel = histogram_heatmap(
                _label(run, order[name], name), run.histograms(name, metric), marks
            )
            if panel is not None:
                panels.append(panel)
        if not panels:
            continue
        heading = f"{run.name}: {what} of the {title}"
        uri = heatmap_figure(heading, panels, scale, axis)
        caption = heading + (f" ({len(shown)} of {len(members)}, evenly spaced in forward order)"
                             if len(shown) < len(members) else "")  # fmt: skip
        body += figure(uri, caption)
    return body


def _value_axis(run: RunData, metric: str, label: str, log10_values: bool) -> Axis:
    names = run.layers_with(metric, "histogram")
    edges = run.histograms(names[0], metric)[0][1] if names else np.linspace(-1, 1, 3)
    inner_low, inner_high = float(edges[1]), float(edges[-2])
    if log10_values:
        ticks = [(v, f"1e{v:.0f}") for v in nice_ticks(inner_low, inner_high, 4) if v == int(v)]
        return Axis(label, ticks, low_end="0, tiny", high_end="huge, Inf")
    ticks = [(v, f"{v:g}") for v in nice_ticks(inner_low, inner_high, 4)]
    return Axis(
        label, ticks, low_end=f"≤{inner_low:.2g}, -Inf", high_end=f"≥{inner_high:.2g}, +Inf"
    )


ACTIVATION_HEATMAP_NOTE = (
    "One panel per layer: x = optimiser step, y = activation value (the fixed bins the monitor "
    "counts, range on the axis), colour = share of the layer's values in that bin at that step "
    "(log scale; grey = no snapshot). A collapse to zero shows as one bright band at 0 (dead "
    "ReLUs), saturation as bands at the ends (±1 for tanh); the end bins also hold values beyond "
    "the range and ±Inf; NaN is not counted, and a red tick above a panel marks a step where the "
    "layer produced NaN/Inf."
)
GRADIENT_HEATMAP_NOTE = (
    "One panel per parameter: x = optimiser step, y = log10 |gradient| (the fixed bins, range on "
    "the axis), colour = share of the gradient's entries in that bin (log scale). The bottom bin "
    "holds exact zeros and anything tinier (a band there = no gradient reaches the layer), the top "
    "bin anything larger and Inf; a red tick above a panel marks a step whose gradient norm was "
    "NaN/Inf. A band drifting down over the run means vanishing gradients, up means exploding."
)


def activation_heatmaps_body(runs: Sequence[RunData]) -> str:
    body = ""
    for run in runs:
        layers = run.layers_with(ACT_HIST, "histogram")
        if not layers:
            continue
        axis = _value_axis(run, ACT_HIST, "activation value", log10_values=False)
        figures = _heatmap_figures(run, ACT_HIST, activation_groups(run, layers), axis,
                                   "activation histograms over steps", (ACT_NONFINITE, True))  # fmt: skip
        body += grid(figures)
    return body and note(ACTIVATION_HEATMAP_NOTE) + body


def gradient_heatmaps_body(runs: Sequence[RunData]) -> str:
    body = ""
    for run in runs:
        parameters = run.layers_with(GRAD_HIST, "histogram")
        if not parameters:
            continue
        axis = _value_axis(run, GRAD_HIST, "|gradient|", log10_values=True)
        figures = _heatmap_figures(run, GRAD_HIST, parameter_groups(run, parameters), axis,
                                   "gradient histograms over steps", (GRAD_NORM, False))  # fmt: skip
        body += grid(figures)
    return body and note(GRADIENT_HEATMAP_NOTE) + body


def empty(what: str) -> str:
    return note(f"No {what} recorded: the Monitor records them every histograms_every steps "
                "(MonitorConfig(histograms_every=...); 0 switches them off).")  # fmt: skip
