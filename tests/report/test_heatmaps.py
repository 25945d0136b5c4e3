"""Heat-map data from a known store: each snapshot's counts land in the right bin and column."""

from __future__ import annotations

import numpy as np
import pytest

from vitalstats.report.collect import open_runs
from vitalstats.report.heatmaps import evenly_spaced, histogram_heatmap, layers_heatmap, step_grid
from vitalstats.store import LayerInfo, RunStore

EDGES = np.linspace(-5.0, 5.0, 65)  # the monitor's default act_hist binning


def _known_bin(step: int) -> int:
    return 10 + step // 10  # the bin all of a snapshot's values fall in


@pytest.fixture
def known_store(tmp_path):
    path = tmp_path / "known.sqlite"
    with RunStore(path) as store:
        run = store.start_run("known")
        store.add_layers(run, [LayerInfo("net.1", "Tanh", 1, 0)])
        for step in range(0, 100, 10):
            counts = np.zeros(64, dtype=np.int64)
            counts[_known_bin(step)] = 800
            counts[63] = 200 if step == 50 else 0  # values >= 5 or +Inf at step 50
            store.add_histogram(run, step, "net.1", "act_hist", EDGES, counts)
    return path


def test_each_snapshot_is_one_column_with_its_values_in_the_bin_they_were_counted_in(known_store):
    store, (run,) = open_runs(known_store)
    try:
        panel = histogram_heatmap("net.1", run.histograms("net.1", "act_hist"))
    finally:
        store.close()
    assert panel.values.shape == (64, 10)
    np.testing.assert_array_equal(panel.y_edges, EDGES)
    np.testing.assert_allclose(panel.x_edges, np.arange(-5.0, 100.0, 10.0))  # centred on steps
    for column, step in enumerate(range(0, 100, 10)):
        expected = np.zeros(64)
        expected[_known_bin(step)] = 0.8 if step == 50 else 1.0
        expected[63] = 0.2 if step == 50 else 0.0
        np.testing.assert_allclose(panel.values[:, column], expected)


def test_long_runs_merge_snapshots_into_columns_by_summing_counts():
    rng = np.random.default_rng(0)
    snapshots = [(step, EDGES, rng.integers(0, 50, 64)) for step in range(0, 5000, 5)]
    panel = histogram_heatmap("layer", snapshots, max_columns=100)
    assert panel.values.shape == (64, 100)
    centres = np.array([step for step, _, _ in snapshots], dtype=float)
    column = np.searchsorted(panel.x_edges, centres, side="right") - 1
    for index in (0, 37, 99):  # oracle: the counts of the snapshots inside the column, summed
        total = np.sum([c for (_, _, c), k in zip(snapshots, column) if k == index], axis=0)
        np.testing.assert_allclose(panel.values[:, index], total / total.sum())


def test_a_gap_in_the_recording_is_a_column_without_data():
    snapshots = [(step, EDGES, np.ones(64)) for step in (0, 10, 20, 50, 60)]
    panel = histogram_heatmap("layer", snapshots)
    assert panel.values.shape == (64, 7)
    empty_columns = np.flatnonzero(np.isnan(panel.values).all(axis=0))
    np.testing.assert_array_equal(empty_columns, [3, 4])  # steps 30 and 40 were not recorded


def test_snapshots_with_other_bin_edges_are_left_out():
    other = np.linspace(-1, 1, 65)
    snapshots = [(0, EDGES, np.ones(64)), (10, other, np.ones(64)), (20, EDGES, np.ones(64))]
    panel = histogram_heatmap("layer", snapshots)
    without = histogram_heatmap("layer", [snapshots[0], snapshots[2]])
    np.testing.assert_array_equal(panel.values, without.values)
    np.testing.assert_array_equal(panel.x_edges, without.x_edges)


def test_nothing_recorded_is_no_heat_map():
    assert histogram_heatmap("layer", []) is None


def test_layers_heatmap_rows_are_column_means_of_each_layer():
    steps = np.arange(0, 40, 10)
    first, second = np.array([1.0, 2.0, np.nan, 4.0]), np.array([8.0, 6.0, 4.0, 2.0])
    panel = layers_heatmap("grad_norm", [(steps, first), (steps[::2], second[::2])])
    assert panel.values.shape == (2, 4)
    np.testing.assert_array_equal(panel.values[0], [1.0, 2.0, np.nan, 4.0])
    np.testing.assert_array_equal(panel.values[1], [8.0, np.nan, 4.0, np.nan])


def test_step_grid_puts_each_regular_step_in_its_own_column():
    edges, column = step_grid(np.arange(0, 500, 50))
    np.testing.assert_array_equal(column, np.arange(10))
    assert edges[0] == -25 and edges[-1] == 475


def test_evenly_spaced_keeps_the_first_and_the_last():
    names = [f"layer.{i}" for i in range(81)]
    picked = evenly_spaced(names, 8)
    assert len(picked) == 8 and picked[0] == "layer.0" and picked[-1] == "layer.80"
    assert evenly_spaced(names[:5], 8) == names[:5]
