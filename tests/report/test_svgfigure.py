"""Hand-built SVG heat maps: the pixels carry the right colours in the right places, text is
escaped, NaN/Inf steps are marked, the colour scale maps values as documented."""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from PIL import Image

from vitalstats.report.heatmaps import HeatMap, histogram_heatmap
from vitalstats.report.png import encode_png
from vitalstats.report.svgfigure import (
    NO_DATA_RGB,
    Axis,
    ColourScale,
    heatmap_figure,
    lookup_table,
    nice_ticks,
)

SVG = "{http://www.w3.org/2000/svg}"


def _svg(uri: str) -> ElementTree.Element:
    prefix = "data:image/svg+xml;base64,"
    assert uri.startswith(prefix)
    return ElementTree.fromstring(base64.b64decode(uri[len(prefix) :]))


def _png(href: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert href.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(href[len(prefix) :]))).convert("RGB"))


def test_encode_png_round_trips_through_pillow():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (7, 13, 3), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(image))).convert("RGB"))
    np.testing.assert_array_equal(decoded, image)
    with pytest.raises(ValueError, match="expected an"):
        encode_png(np.zeros((4, 4)))


def test_heat_map_pixels_put_each_share_in_its_bin_with_the_scale_colour():
    """Oracle: the matplotlib colormap at the documented log position of each share."""
    edges = np.linspace(-5, 5, 11)
    snapshots = []
    for step in range(4):
        counts = np.zeros(10)
        counts[step + 2] = 90  # 90% in bin step + 2, 10% in the top bin
        counts[9] = 10
        snapshots.append((step * 10, edges, counts))
    panel = histogram_heatmap("net.1 (Tanh)", snapshots)
    scale = ColourScale(1e-4, 1.0, log=True, label="share of values")
    root = _svg(heatmap_figure("t", [panel], scale, Axis("activation value")))
    images = [element.get("href") for element in root.iter(f"{SVG}image")]
    pixels = _png(images[0])  # the panel; the last image is the colour bar
    assert pixels.shape == (10, 4, 3)  # one pixel per (bin, step), top row = last bin
    table = lookup_table("viridis")

    def colour(share: float) -> np.ndarray:
        position = (np.log10(share) - -4) / 4 if share > 0 else 0.0
        return table[round(position * 255)]

    for column in range(4):
        for bin_index in range(10):
            share = 0.9 if bin_index == column + 2 else 0.1 if bin_index == 9 else 0.0
            np.testing.assert_array_equal(pixels[9 - bin_index, column], colour(share))


def test_columns_without_a_snapshot_are_grey_and_nan_steps_are_marked():
    values = np.array([[0.5, np.nan, 0.5], [0.5, np.nan, 0.5]])
    panel = HeatMap("layer", np.array([0.0, 1, 2, 3]), np.array([0.0, 1, 2]), values,
                    marks=np.array([2.0]))  # fmt: skip
    root = _svg(heatmap_figure("t", [panel], ColourScale(1e-4, 1, True, "share"), Axis("v")))
    pixels = _png(next(root.iter(f"{SVG}image")).get("href"))
    assert tuple(pixels[0, 1]) == NO_DATA_RGB and tuple(pixels[0, 0]) != NO_DATA_RGB
    marks = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert [m.find(f"{SVG}title").text for m in marks] == ["NaN/Inf at step 2"]


def test_text_in_the_figure_is_escaped():
    panel = HeatMap("<script>alert(1)</script>", np.array([0.0, 1]), np.array([0.0, 1]),
                    np.array([[1.0]]))  # fmt: skip
    uri = heatmap_figure("a & b", [panel], ColourScale(1e-4, 1, True, "share"), Axis("<y>"))
    raw = base64.b64decode(uri.split(",", 1)[1]).decode()
    assert "<script>" not in raw and "&lt;script&gt;" in raw
    texts = "".join(_svg(uri).itertext())
    assert "<script>alert(1)</script>" in texts and "a & b" in texts


def test_linear_scale_positions_and_ticks():
    scale = ColourScale(-6.0, 0.0, log=False, label="log10 ratio")
    np.testing.assert_allclose(scale.position(np.array([-6.0, -3.0, 0.0, 3.0, np.nan])),
                               [0.0, 0.5, 1.0, 1.0, np.nan])  # fmt: skip
    assert [value for value, _ in scale.ticks()] == nice_ticks(-6.0, 0.0, 5)


def test_nice_ticks_are_round_and_inside_the_range():
    assert nice_ticks(0, 2000, 6) == [0, 500, 1000, 1500, 2000]
    ticks = nice_ticks(-4.84, 4.84, 4)  # range / 4 = 2.42: the next round step is 2.5
    assert ticks == [-2.5, 0.0, 2.5]
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", f"{t:g}") for t in ticks)
