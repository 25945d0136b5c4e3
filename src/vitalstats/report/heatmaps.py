"""Heat maps over optimiser steps, as plain numpy: histograms over time (fastai's "colorful
dimension") and one metric of many layers (a layer per row).

A heat map's columns are a uniform grid of steps: snapshots recorded every k steps get one
column each; longer runs are merged into at most ``max_columns`` columns (counts summed,
values averaged), so the picture of a 10,000-step run stays a few kilobytes. A column with no
snapshot is NaN (drawn as "no data").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

MAX_COLUMNS = 600


@dataclass(frozen=True)
class HeatMap:
    """One panel: ``values[row, column]`` with row 0 the *bottom* row (the first bin), columns
    spanning ``x_edges`` (steps, C + 1), rows spanning ``y_edges`` (bin edges or row numbers,
    R + 1). ``marks`` are steps to flag above the panel (NaN/Inf seen there)."""

    label: str
    x_edges: np.ndarray
    y_edges: np.ndarray
    values: np.ndarray  # (R, C) float, NaN = no data
    marks: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.float64))


def step_grid(steps: np.ndarray, max_columns: int = MAX_COLUMNS) -> tuple[np.ndarray, np.ndarray]:
    """(x_edges (C + 1,), column of each step) for sorted ``steps``: one column per
    recording interval (the median gap), at most ``max_columns`` columns."""
    steps = np.asarray(steps, dtype=np.float64)
    if len(steps) == 0:
        return np.array([0.0, 1.0]), np.array([], dtype=np.int64)
    unique = np.unique(steps)
    gap = float(np.median(np.diff(unique))) if len(unique) > 1 else 1.0
    gap = gap if gap > 0 else 1.0
    low, high = unique[0] - gap / 2, unique[-1] + gap / 2
    columns = int(min(max_columns, max(1, round((high - low) / gap))))
    edges = np.linspace(low, high, columns + 1)
    index = np.floor((steps - low) / (high - low) * columns).astype(np.int64)
    return edges, np.clip(index, 0, columns - 1)


def histogram_heatmap(
    label: str,
    histograms: Sequence[tuple[int, np.ndarray, np.ndarray]],
    marks: Sequence[float] = (),
    max_columns: int = MAX_COLUMNS,
) -> HeatMap | None:
    """A layer's histograms over steps as the share of its values in each bin per column
    (counts / column total; NaN where a column has no snapshot or no counted value).

    Snapshots whose bin edges differ from the first one's are left out (a run records one
    fixed binning per metric). None when there is nothing to draw."""
    if not histograms:
        return None
    reference = np.asarray(histograms[0][1], dtype=np.float64)
    kept = [
        (step, np.asarray(counts, np.float64))
        for step, edges, counts in histograms
        if len(edges) == len(reference) and np.array_equal(edges, reference)
    ]
    steps = np.array([step for step, _ in kept], dtype=np.float64)
    x_edges, column = step_grid(steps, max_columns)
    totals = np.zeros((len(reference) - 1, len(x_edges) - 1))
    for (_, counts), index in zip(kept, column):
        totals[:, index] += counts
    column_sum = totals.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(column_sum > 0, totals / column_sum, np.nan)
    return HeatMap(label, x_edges, reference, shares, np.asarray(marks, dtype=np.float64))


def layers_heatmap(
    label: str,
    series: Sequence[tuple[np.ndarray, np.ndarray]],
    max_columns: int = MAX_COLUMNS,
) -> HeatMap:
    """One metric of many layers: row i (from the bottom) is ``series[i]`` = (steps, values),
    each column the mean of the finite values recorded in it (NaN where none)."""
    every_step = np.concatenate([np.asarray(s, np.float64) for s, _ in series]) if series else []
    x_edges, _ = step_grid(np.unique(every_step), max_columns)
    columns = len(x_edges) - 1
    values = np.full((len(series), columns), np.nan)
    for row, (steps, ys) in enumerate(series):
        steps, ys = np.asarray(steps, np.float64), np.asarray(ys, np.float64)
        finite = np.isfinite(ys)
        if not finite.any():
            continue
        index = np.searchsorted(x_edges, steps[finite], side="right") - 1
        index = np.clip(index, 0, columns - 1)
        sums = np.bincount(index, weights=ys[finite], minlength=columns)
        counts = np.bincount(index, minlength=columns)
        with np.errstate(invalid="ignore", divide="ignore"):
            values[row] = np.where(counts > 0, sums / counts, np.nan)
    return HeatMap(label, x_edges, np.arange(len(series) + 1, dtype=np.float64), values)


def evenly_spaced(items: Sequence[str], limit: int) -> list[str]:
    """At most ``limit`` items spread evenly over ``items``, the first and the last kept."""
    if len(items) <= limit:
        return list(items)
    if limit <= 1:
        return list(items[:limit])
    picks = np.unique(np.round(np.linspace(0, len(items) - 1, limit)).astype(int))
    return [items[i] for i in picks]
