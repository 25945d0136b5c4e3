"""Heat-map figures written directly as SVG: stacked panels sharing the step axis, each a
PNG of one pixel per cell scaled without smoothing, tick labels as text, one colour bar.

matplotlib would take about 0.1 s per panel; a report of a 150-tensor model draws hundreds of
panels, so these figures are built here in a few milliseconds each. Every text is
XML-escaped; the figure is returned as a ``data:image/svg+xml`` URI like the others.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vitalstats.report.heatmaps import HeatMap
from vitalstats.report.png import png_data_uri

WIDTH = 760
FONT = "DejaVu Sans, Verdana, Arial, sans-serif"
NO_DATA_RGB = (236, 239, 241)  # a column without a snapshot
MARK_COLOR = "#d62728"  # NaN/Inf seen at that step
CHAR_WIDTH = 6.0  # px per character at font-size 10, for margins


@dataclass(frozen=True)
class ColourScale:
    """Value -> colour: ``log`` maps log10(value) linearly over [log10 vmin, log10 vmax]
    (values <= 0 or below vmin get the lowest colour); else linear over [vmin, vmax]."""

    vmin: float
    vmax: float
    log: bool
    label: str
    cmap: str = "viridis"

    def position(self, values: np.ndarray) -> np.ndarray:
        """0..1 along the colour bar; NaN stays NaN."""
        values = np.asarray(values, dtype=np.float64)
        if self.log:
            low, high = math.log10(self.vmin), math.log10(self.vmax)
            with np.errstate(divide="ignore", invalid="ignore"):
                logs = np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), -np.inf)
            logs = np.where(np.isnan(values), np.nan, logs)
            out = (logs - low) / max(high - low, 1e-12)
        else:
            out = (values - self.vmin) / max(self.vmax - self.vmin, 1e-12)
        return np.where(np.isnan(out), np.nan, np.clip(out, 0.0, 1.0))

    def ticks(self) -> list[tuple[float, str]]:
        if self.log:
            low, high = (
                math.ceil(math.log10(self.vmin) - 1e-9),
                math.floor(math.log10(self.vmax) + 1e-9),
            )
            stride = max(1, math.ceil((high - low + 1) / 6))
            return [(10.0**k, f"1e{k}") for k in range(low, high + 1, stride)]
        return [(v, format_number(v)) for v in nice_ticks(self.vmin, self.vmax, 5)]


def lookup_table(name: str) -> np.ndarray:
    """(256, 3) uint8 colours of a matplotlib colormap (matplotlib imported here, lazily)."""
    import matplotlib

    colours = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.round(colours * 255).astype(np.uint8)


def to_rgb(values: np.ndarray, scale: ColourScale, table: np.ndarray) -> np.ndarray:
    """(R, C) values (row 0 = bottom) -> (R, C, 3) uint8 image rows top first."""
    position = scale.position(values)[::-1]
    rgb = np.empty((*position.shape, 3), np.uint8)
    missing = np.isnan(position)
    index = np.round(np.where(missing, 0.0, position) * 255).astype(np.int64)
    rgb[...] = table[index]
    rgb[missing] = NO_DATA_RGB
    return rgb


def nice_ticks(low: float, high: float, target: int = 6) -> list[float]:
    """Round numbers (1, 2, 2.5, 5 x 10^k apart) inside [low, high]."""
    if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
        return [low] if np.isfinite(low) else []
    raw = (high - low) / max(target, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def format_number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.0e}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")
    return f"{value:g}"


def _text(
    x: float, y: float, text: str, size: int = 10, anchor: str = "start", **extra: str
) -> str:
    attributes = "".join(
        f' {key.replace("_", "-")}="{html.escape(value)}"' for key, value in extra.items()
    )
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{attributes}>'
        f"{html.escape(text)}</text>"
    )


def _shorten(text: str, limit: int) -> str:
    return (
        text if len(text) <= limit else text[: limit // 2 - 1] + "…" + text[-(limit - limit // 2) :]
    )


@dataclass(frozen=True)
class Axis:
    """The y axis of every panel: ticks as (value in y_edges units, text); optional labels of
    the first and last row (e.g. "<= -5, -Inf" for a histogram's end bins)."""

    label: str
    ticks: Sequence[tuple[float, str]] = ()
    low_end: str = ""
    high_end: str = ""


def heatmap_figure(
    title: str,
    panels: Sequence[HeatMap],
    scale: ColourScale,
    axis: Axis,
    panel_height: int = 56,
    x_label: str = "optimiser step",
) -> str:
    """Stacked heat-map panels sharing the step axis, as an SVG data URI."""
    table = lookup_table(scale.cmap)
    tick_texts = [text for _, text in axis.ticks] + [axis.low_end, axis.high_end]
    left = 22 + CHAR_WIDTH * min(max((len(t) for t in tick_texts), default=4), 30)
    right = 92
    plot_width = WIDTH - left - right
    x_low = min(float(p.x_edges[0]) for p in panels)
    x_high = max(float(p.x_edges[-1]) for p in panels)
    span = max(x_high - x_low, 1e-9)

    def x_of(step: float) -> float:
        return left + (step - x_low) / span * plot_width

    parts: list[str] = []
    y = 22.0
    parts.append(
        _text(left, 14, _shorten(title, int((WIDTH - left) / 7.2)), size=12, font_weight="bold")
    )
    top = y
    for panel in panels:
        parts.append(_text(left, y + 11, _shorten(panel.label, 110), size=10))
        y += 15
        width = min(max(2.0, plot_width / max(panel.values.shape[1], 1)), 6.0)
        for step in np.unique(panel.marks):
            x = min(max(x_of(step) - width / 2, left), left + plot_width - width)
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="4"'
                f' fill="{MARK_COLOR}"><title>NaN/Inf at step {int(step)}</title></rect>'
            )
        y += 5
        x0, x1 = x_of(float(panel.x_edges[0])), x_of(float(panel.x_edges[-1]))
        image = png_data_uri(to_rgb(panel.values, scale, table))
        parts.append(
            f'<image x="{x0:.1f}" y="{y:.1f}" width="{x1 - x0:.1f}" height="{panel_height}" '
            f'preserveAspectRatio="none" style="image-rendering:pixelated" href="{image}"/>'
        )
        parts.append(
            f'<rect x="{left}" y="{y:.1f}" width="{plot_width:.1f}" height="{panel_height}" '
            'fill="none" stroke="#52606d" stroke-width="0.8"/>'
        )
        parts.extend(_y_ticks(panel, axis, left, y, panel_height))
        y += panel_height + 6
    bottom = y - 6
    for step in nice_ticks(x_low, x_high, 7):
        x = x_of(step)
        parts.append(
            f'<line x1="{x:.1f}" y1="{bottom:.1f}" x2="{x:.1f}" y2="{bottom + 4:.1f}" stroke="#52606d"/>'
        )
        parts.append(_text(x, bottom + 15, format_number(round(step)), anchor="middle"))
    parts.append(_text(left + plot_width / 2, bottom + 29, x_label, anchor="middle"))
    parts.append(
        _text(10, (top + bottom) / 2, axis.label, anchor="middle",
              transform=f"rotate(-90 10 {(top + bottom) / 2:.1f})")
    )  # fmt: skip
    parts.extend(
        _colour_bar(scale, table, WIDTH - right + 14, top + 20, max(bottom - top - 20, 40))
    )
    height = bottom + 36
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" font-family="{FONT}" fill="#1f2933">'
        f'<rect width="100%" height="100%" fill="#ffffff"/>{"".join(parts)}</svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _y_ticks(panel: HeatMap, axis: Axis, left: float, top: float, height: int) -> list[str]:
    edges = panel.y_edges
    low, high = float(edges[0]), float(edges[-1])

    def y_of(value: float) -> float:
        return top + height - (value - low) / max(high - low, 1e-12) * height

    parts = []
    for value, text in axis.ticks:
        if low <= value <= high:
            parts.append(
                f'<line x1="{left - 3}" y1="{y_of(value):.1f}" x2="{left}" y2="{y_of(value):.1f}" stroke="#52606d"/>'
            )
            parts.append(_text(left - 5, y_of(value) + 3, text, size=9, anchor="end"))
    for text, row in ((axis.low_end, 0), (axis.high_end, len(edges) - 2)):
        if text and len(edges) > 3:
            centre = (edges[row] + edges[row + 1]) / 2
            inner = edges[row + 1] if row == 0 else edges[row]
            parts.append(
                _text(left - 5, y_of(centre) + 3, text, size=8, anchor="end", fill="#7b8794")
            )
            parts.append(
                f'<line x1="{left}" y1="{y_of(inner):.1f}" x2="{left + 8}" y2="{y_of(inner):.1f}" '
                'stroke="#ffffff" stroke-width="0.8"/>'
            )
    return parts


def _colour_bar(
    scale: ColourScale, table: np.ndarray, x: float, top: float, height: float
) -> list[str]:
    gradient = np.repeat(table[::-1][:, None, :], 1, axis=1)  # top = highest value
    parts = [
        f'<image x="{x:.1f}" y="{top:.1f}" width="12" height="{height:.1f}" preserveAspectRatio="none" '
        f'href="{png_data_uri(gradient)}"/>',
        f'<rect x="{x:.1f}" y="{top:.1f}" width="12" height="{height:.1f}" fill="none" stroke="#52606d" stroke-width="0.6"/>',
    ]
    for value, text in scale.ticks():
        position = float(scale.position(np.array([value]))[0])
        y = top + height - position * height
        parts.append(
            f'<line x1="{x + 12}" y1="{y:.1f}" x2="{x + 15}" y2="{y:.1f}" stroke="#52606d"/>'
        )
        parts.append(_text(x + 17, y + 3, text, size=9))
    parts.append(_text(x, top - 8, scale.label, size=9))
    return parts
