"""Figures for the report: plain numpy in, a self-contained SVG data URI out.

matplotlib is imported here only (lazily, from the report), with the Agg backend, so
``import vitalstats`` never pulls it in. Each figure is written as SVG with text kept as text
(``svg.fonttype = "none"``) and embedded as ``data:image/svg+xml;base64,...`` in an ``<img>``:
an image cannot run script, so no name from a model can inject anything through a figure.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

UPDATE_TO_DATA_GUIDE_LOG10 = -3.0  # Karpathy's rule of thumb: update std ~ 1e-3 of weight std
MAX_DEPTH_TICKS = 30  # layer names on the by-depth axis; more layers label every k-th


@dataclass(frozen=True)
class Line:
    """One curve: ``label`` as shown in the legend, x and y as float arrays of equal length."""

    label: str
    x: np.ndarray
    y: np.ndarray
    dashed: bool = False


def _pyplot():  # -> matplotlib.pyplot
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def mpl_text(text: str) -> str:
    """A model/store name made literal for matplotlib: ``$`` would start mathtext and a
    leading ``_`` would hide a legend entry (``_orig_mod.fc.weight`` from torch.compile)."""
    text = text.replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


def to_data_uri(figure: Any, tight: bool = False) -> str:  # figure: matplotlib.figure.Figure
    """Render ``figure`` to SVG and return it as a base64 data URI; closes the figure.

    Figures are laid out in inches by the functions below; ``tight=True`` (one extra draw to
    measure every text, about a third of the cost) is kept for layouts that depend on text."""
    import matplotlib

    plt = _pyplot()
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "vitalstats"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight" if tight else None,
                       metadata={"Date": None})  # fmt: skip
    plt.close(figure)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _title(axes: Any, text: str) -> None:
    """A title at a fixed height: matplotlib's automatic title placement measures every tick
    label of the axes at each draw."""
    axes.set_title(mpl_text(text), fontsize=10, y=1.0, pad=5)


def _axes_at(figure: Any, left: float, bottom: float, width: float, height: float) -> Any:
    """Axes placed in inches on ``figure`` (whose size is in inches too)."""
    fig_width, fig_height = figure.get_size_inches()
    return figure.add_axes(
        (left / fig_width, bottom / fig_height, width / fig_width, height / fig_height)
    )


LEGEND_CHAR_INCHES = 0.052  # average width of a character at legend font size 6-7


def _colors(count: int) -> list:
    plt = _pyplot()
    cmap = plt.get_cmap("viridis")
    return [cmap(i / max(count - 1, 1) * 0.9) for i in range(count)]


def _finite(x: np.ndarray, y: np.ndarray, positive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(y) & np.isfinite(x)
    if positive:
        keep &= y > 0
    return x[keep], y[keep]


def _log_y(axes: Any) -> None:
    """A log y axis labelled in plain text (1e-03): matplotlib's default 10^k labels go
    through mathtext, which costs a fifth of a report's drawing time."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return f"{x:g}"

    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(PlainLogFormatter())
    axes.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def _integer_steps(axes: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend(axes, count: int) -> None:
    if count == 0:
        return
    if count <= 8:
        axes.legend(fontsize=7, frameon=False)
    else:
        axes.legend(
            fontsize=6,
            frameon=False,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            ncol=1 + count // 24,
        )


def _outside_legend_inches(labels: Sequence[str], count: int) -> float:
    """Width the legend needs right of the axes (0 when it fits inside, up to 8 entries)."""
    if count <= 8 or not labels:
        return 0.0
    columns = 1 + count // 24
    return columns * (0.45 + LEGEND_CHAR_INCHES * min(max(len(label) for label in labels), 60))


MAX_POINTS_PER_LINE = 1000  # longer series are drawn as bucket means (SVG size stays bounded)


def thin(
    x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS_PER_LINE
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y) cut into at most ``max_points`` consecutive buckets of near-equal size, each
    drawn as its mean x and mean y; also returns each bucket's min and max y (the envelope).
    Series this short or shorter come back unchanged (min = max = y)."""
    if len(x) <= max_points:
        return x, y, y, y
    buckets_x, buckets_y = np.array_split(x, max_points), np.array_split(y, max_points)
    return (
        np.array([b.mean() for b in buckets_x]),
        np.array([b.mean() for b in buckets_y]),
        np.array([b.min() for b in buckets_y]),
        np.array([b.max() for b in buckets_y]),
    )


def _draw(axes, x: np.ndarray, y: np.ndarray, **style) -> None:
    x, y, _, _ = thin(x, y)
    marker = "o" if len(x) == 1 else None  # a single point is invisible as a line
    axes.plot(x, y, marker=marker, markersize=3, **style)


def lines_figure(
    lines: Sequence[Line],
    title: str,
    ylabel: str,
    xlabel: str = "step",
    log_y: bool = False,
    guide: float | None = None,
    guide_label: str = "",
    by_order_colors: bool = True,
) -> str:
    """One axes of curves (e.g. gradient norm per layer over steps); optional horizontal guide.

    Non-finite points (and, on a log axis, non-positive ones) are left out of the drawing.
    """
    plt = _pyplot()
    entries = len(lines) + (1 if guide is not None and guide_label else 0)
    legend_width = _outside_legend_inches([line.label for line in lines], entries)
    figure = plt.figure(figsize=(7.5 + legend_width, 3.4))
    axes = _axes_at(figure, 0.85, 0.5, 6.45, 2.6)
    colors = _colors(len(lines)) if by_order_colors else [None] * len(lines)
    drawn = []
    for line, color in zip(lines, colors):
        x, y = _finite(np.asarray(line.x, float), np.asarray(line.y, float), positive=log_y)
        style = {"linestyle": "--", "linewidth": 0.9} if line.dashed else {"linewidth": 1.2}
        _draw(axes, x, y, label=mpl_text(line.label), color=color, **style)
        drawn.append(y)
    if guide is not None:
        axes.axhline(guide, color="#c0392b", linestyle="--", linewidth=1, label=guide_label or None)
    if log_y:
        _log_y(axes)
        values = np.concatenate(drawn) if drawn else np.array([])
        if len(values):  # a few extreme dips (a gradient of 1e-30) must not flatten the rest
            low, high = np.percentile(values, 1) / 3, values.max() * 3
            if low < high:
                axes.set_ylim(low, high)
    _title(axes, title)
    if xlabel == "step":
        _integer_steps(axes)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel, fontsize=9)
    axes.grid(alpha=0.3)
    _legend(axes, entries)
    return to_data_uri(figure)


def rolling_quantiles(
    x: np.ndarray,
    y: np.ndarray,
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
    window: int | None = None,
    max_points: int = MAX_POINTS_PER_LINE,
) -> tuple[np.ndarray, np.ndarray]:
    """(centres x (K,), quantiles (len(quantiles), K)) of ``y`` in a sliding window of
    ``window`` consecutive points (default: 4% of the series, at least 9), evaluated at
    ``K <= max_points`` evenly spaced positions. Windows near the ends are shifted inwards so
    every one holds ``window`` points. Quantiles of the values themselves: unlike mean +- 2 std,
    the band never leaves the range the loss actually took."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(y)
    if n == 0:
        return np.array([]), np.empty((len(quantiles), 0))
    window = min(n, window or max(9, n // 25))
    centres = np.unique(np.linspace(0, n - 1, min(n, max_points)).round().astype(np.int64))
    starts = np.clip(centres - window // 2, 0, n - window)
    windows = np.lib.stride_tricks.sliding_window_view(y, window)[starts]
    return x[centres], np.quantile(windows, quantiles, axis=1)


@dataclass(frozen=True)
class LossCurve:
    """A run's loss, the monitor's EWM mean of it and its eval loss (any may be empty)."""

    run: str
    loss: Line
    ewm_mean: Line
    eval_loss: Line


def loss_figure(curves: Sequence[LossCurve]) -> str:
    """One panel per run: raw loss (faint), its rolling median with a band between the rolling
    10th and 90th percentiles, the monitor's EWM mean (thin, dashed) and eval loss (diamonds).

    The y range comes from the raw loss only (the band lies inside it); the axis is
    logarithmic when every drawn loss is positive and they span more than 20x.
    """
    plt = _pyplot()
    columns = min(len(curves), 2)
    rows = -(-len(curves) // columns)
    figure, axes_grid = plt.subplots(
        rows, columns, figsize=(7.5 if columns == 1 else 11, 3.0 * rows), squeeze=False
    )
    figure.subplots_adjust(left=0.85 / (7.5 if columns == 1 else 11), right=0.98,
                           bottom=0.55 / (3.0 * rows), top=1 - 0.35 / (3.0 * rows),
                           wspace=0.2, hspace=0.55 if rows > 1 else 0.2)  # fmt: skip
    for index, curve in enumerate(curves):
        axes = axes_grid[index // columns][index % columns]
        x, y = _finite(curve.loss.x, curve.loss.y)
        _draw(axes, x, y, color="#7f8c8d", alpha=0.45, linewidth=0.8, label="loss")
        if len(x) > 1:
            centres, (low, median, high) = rolling_quantiles(x, y)
            axes.fill_between(centres, low, high, color="#3498db", alpha=0.25, linewidth=0,
                              label="rolling 10–90%")  # fmt: skip
            axes.plot(centres, median, color="#2c3e50", linewidth=1.5, label="rolling median")
        mean_x, mean_y = _finite(curve.ewm_mean.x, curve.ewm_mean.y)
        if len(mean_x):
            _draw(axes, mean_x, mean_y, color="#8e44ad", linewidth=0.8, linestyle="--",
                  label="EWM mean")  # fmt: skip
        eval_x, eval_y = _finite(curve.eval_loss.x, curve.eval_loss.y)
        if len(eval_x):
            axes.plot(eval_x, eval_y, "D", color="#e67e22", markersize=4, label="eval loss")
        drawn = np.concatenate([y, eval_y])
        if len(drawn) and np.all(drawn > 0) and drawn.max() / drawn.min() > 20:
            _log_y(axes)  # rare tiny losses are clipped, spikes stay in view
            axes.set_ylim(np.percentile(drawn, 0.5) / 1.5, drawn.max() * 1.5)
        elif len(drawn):
            span = max(drawn.max() - drawn.min(), 1e-12)
            axes.set_ylim(drawn.min() - 0.1 * span, drawn.max() + 0.1 * span)
        _title(axes, curve.run)
        _integer_steps(axes)
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        axes.grid(alpha=0.3)
        if index == 0:  # one legend: every panel draws the same things
            axes.legend(fontsize=7, frameon=False)
    for index in range(len(curves), rows * columns):
        axes_grid[index // columns][index % columns].set_visible(False)
    return to_data_uri(figure)


@dataclass(frozen=True)
class Histogram:
    """One layer's histogram at one step: bin ``edges`` (n + 1) and ``counts`` (n)."""

    label: str
    edges: np.ndarray
    counts: np.ndarray


def histograms_figure(
    histograms: Sequence[Histogram], title: str, xlabel: str = "activation value"
) -> str:
    """The makemore figure: one density curve per layer over the bin centres, legend by layer.

    Density = count / (total count * bin width), so layers with different bin widths compare.
    """
    plt = _pyplot()
    labels = [mpl_text(histogram.label) for histogram in histograms]
    legend_columns = 2 if len(labels) > 8 and max(map(len, labels)) <= 64 else 1
    legend_rows = -(-len(labels) // legend_columns)
    legend_height = 0.15 + 0.115 * legend_rows if labels else 0.0
    figure = plt.figure(figsize=(7.5, 3.0 + legend_height))
    axes = _axes_at(figure, 0.85, 0.5 + legend_height, 6.45, 2.2)
    low, high = np.inf, -np.inf
    for histogram, color in zip(histograms, _colors(len(histograms))):
        edges = np.asarray(histogram.edges, float)
        counts = np.asarray(histogram.counts, float)
        total = counts.sum()
        if total <= 0 or len(edges) != len(counts) + 1:
            continue
        occupied = np.flatnonzero(counts > 0)
        low, high = min(low, edges[occupied[0]]), max(high, edges[occupied[-1] + 1])
        density = counts / (total * np.diff(edges))
        centres = (edges[:-1] + edges[1:]) / 2
        axes.plot(centres, density, color=color, linewidth=1.3, label=mpl_text(histogram.label))
    if np.isfinite(low) and high > low:  # zoom on the occupied bins
        margin = 0.1 * (high - low)
        axes.set_xlim(low - margin, high + margin)
    _title(axes, title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("density")
    axes.grid(alpha=0.3)
    if histograms:
        figure.legend(fontsize=6, frameon=False, loc="lower left", ncol=legend_columns,
                      bbox_to_anchor=(0.55 / 7.5, 0.02), borderaxespad=0.0)  # fmt: skip
    return to_data_uri(figure)


def by_depth_figure(
    std_by_run: Mapping[str, Line],
    saturation_by_run: Mapping[str, Line],
    tick_labels: Sequence[str],
) -> str:
    """Two panels over layer position (forward order): activation std and saturated fraction.

    Each run is one line (solid: last measured step); ``tick_labels`` name the positions.
    """
    plt = _pyplot()
    panels = [
        ("activation std", std_by_run, True),
        ("saturated fraction", saturation_by_run, False),
    ]
    panels = [panel for panel in panels if panel[1]]
    figure, axes_row = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.4), squeeze=False)
    runs = list(dict.fromkeys([*std_by_run, *saturation_by_run]))
    palette = plt.get_cmap("tab10").colors
    color_of = {run: palette[index % len(palette)] for index, run in enumerate(runs)}
    for axes, (ylabel, by_run, log_y) in zip(axes_row[0], panels):
        for run, line in by_run.items():
            color = color_of[run]
            x, y = _finite(np.asarray(line.x, float), np.asarray(line.y, float), positive=log_y)
            axes.plot(x, y, marker="o", markersize=3, color=color, label=mpl_text(run))
        if log_y:
            _log_y(axes)
        stride = max(1, -(-len(tick_labels) // MAX_DEPTH_TICKS))  # every k-th name past 30
        positions = list(range(0, len(tick_labels), stride))
        axes.set_xticks(positions)
        axes.set_xticklabels(
            [mpl_text(tick_labels[i]) for i in positions], rotation=45, ha="right", fontsize=7
        )
        axes.set_xlabel("layer position (forward order)")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, frameon=False)
    figure.tight_layout()
    return to_data_uri(figure, tight=True)  # rotated layer names of any length
