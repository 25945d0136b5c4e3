"""Figure helpers: literal text for matplotlib, inlined SVG, density normalisation."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

from vitalstats.report import plots


def _svg(uri: str) -> str:
    prefix = "data:image/svg+xml;base64,"
    assert uri.startswith(prefix)
    return base64.b64decode(uri[len(prefix) :]).decode()


def test_mpl_text_escapes_mathtext_and_keeps_underscored_labels():
    assert plots.mpl_text("cost $5") == r"cost \$5"
    assert plots.mpl_text("_orig_mod.fc").endswith("_orig_mod.fc")
    assert not plots.mpl_text("_orig_mod.fc").startswith("_")
    assert plots.mpl_text("net.0.weight") == "net.0.weight"


def test_lines_figure_is_parseable_svg_with_the_labels_as_text():
    line = plots.Line("net.0.weight", np.arange(5.0), np.array([1.0, 0.5, np.nan, 0.25, 0.0]))
    svg = _svg(plots.lines_figure([line], "title <&>", "grad norm", log_y=True, guide=0.1))
    root = ElementTree.fromstring(svg)
    text = "".join(root.itertext())
    assert "net.0.weight" in text and "title <&>" in text  # escaped in XML, literal once parsed


def test_histogram_density_integrates_to_one():
    """Oracle: numpy's own density=True histogram of the same samples."""
    rng = np.random.default_rng(0)
    samples = np.tanh(rng.normal(size=5000))
    edges = np.linspace(-1, 1, 21)
    counts, _ = np.histogram(samples, edges)
    expected, _ = np.histogram(samples, edges, density=True)
    import matplotlib

    matplotlib.use("Agg")
    captured = {}
    original = matplotlib.axes.Axes.plot

    def spy(self, x, y, *args, **kwargs):
        captured["x"], captured["y"] = np.asarray(x), np.asarray(y)
        return original(self, x, y, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matplotlib.axes.Axes, "plot", spy)
        plots.histograms_figure([plots.Histogram("layer", edges, counts)], "t")
    np.testing.assert_allclose(captured["y"], expected)
    np.testing.assert_allclose(captured["x"], (edges[:-1] + edges[1:]) / 2)


def test_loss_figure_handles_empty_and_single_point_series():
    empty = plots.Line("", np.array([]), np.array([]))
    single = plots.Line("loss", np.array([0.0]), np.array([0.7]))
    curve = plots.LossCurve("run", single, single, empty)
    ElementTree.fromstring(_svg(plots.loss_figure([curve, curve, curve])))


def test_long_series_are_thinned_to_bucket_means():
    x = np.arange(10_000.0)
    y = np.sin(x / 100.0)
    thin_x, thin_y, low, high = plots.thin(x, y, max_points=100)
    np.testing.assert_allclose(thin_x, x.reshape(100, 100).mean(axis=1))
    np.testing.assert_allclose(thin_y, y.reshape(100, 100).mean(axis=1))
    np.testing.assert_array_equal(low, y.reshape(100, 100).min(axis=1))
    np.testing.assert_array_equal(high, y.reshape(100, 100).max(axis=1))
    short = plots.thin(x[:10], y[:10], max_points=100)
    np.testing.assert_array_equal(short[0], x[:10])


def test_a_hundred_thousand_steps_make_a_bounded_figure():
    steps = np.arange(100_000.0)
    lines = [plots.Line(f"layer.{i}.weight", steps, 1.0 / (steps + 1) + i) for i in range(10)]
    uri = plots.lines_figure(lines, "long run", "grad norm", log_y=True)
    assert len(uri) < 2_000_000
    loss = plots.Line("loss", steps, np.exp(-steps / 1e4) + 0.01)
    curve = plots.LossCurve("long", loss, loss, plots.Line("", np.array([]), np.array([])))
    assert len(plots.loss_figure([curve])) < 2_000_000


def test_rolling_quantiles_are_the_quantiles_of_each_window():
    """Oracle: np.quantile of the explicit window of ``window`` points around each centre,
    shifted inwards at the ends."""
    rng = np.random.default_rng(1)
    y = np.exp(rng.normal(size=300))
    x = np.arange(300.0) * 5
    centres, bands = plots.rolling_quantiles(x, y, (0.1, 0.5, 0.9), window=21, max_points=50)
    assert len(centres) == 50 and bands.shape == (3, 50)
    for k, centre in enumerate(centres):
        i = int(centre // 5)
        start = min(max(i - 10, 0), 300 - 21)
        np.testing.assert_allclose(bands[:, k], np.quantile(y[start : start + 21], [0.1, 0.5, 0.9]))


def test_the_loss_band_never_leaves_the_range_the_loss_took():
    """A loss between 0.1 and 3 with occasional spikes: the band stays inside [min, max] of the
    loss (the old mean +- 2 std band reached 1e-8 on such a run)."""
    rng = np.random.default_rng(2)
    steps = np.arange(2000.0)
    loss = np.clip(3 * np.exp(-steps / 400) + 0.1 * rng.lognormal(size=2000), 0.1, 3.0)
    loss[::97] = 3.0  # spikes
    _, (low, median, high) = plots.rolling_quantiles(steps, loss)
    assert low.min() >= loss.min() and high.max() <= loss.max()
    assert np.all(low <= median) and np.all(median <= high)
