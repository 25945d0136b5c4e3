"""TensorBoard export, read back with TensorBoard's own EventAccumulator (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.report.synthetic import HISTOGRAM_EDGES, HOSTILE_NAME, make_store
from vitalstats.store import RunStore, StoreError
from vitalstats.store.tensorboard import (
    TensorBoardWriter,
    export_tensorboard,
    histogram_summary,
    run_directory_name,
    tag,
)

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is an optional extra: pip install 'vitalstats[tensorboard]'",
)


def _read(directory):
    accumulator = event_accumulator.EventAccumulator(
        str(directory),
        size_guidance={event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0},
    )
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tb")
    store = make_store(directory / "runs.sqlite", runs=2, steps=12)
    written = export_tensorboard(store, directory / "tb")
    return store, written


def test_one_directory_per_run(exported):
    _, written = exported
    assert [path.name for path in written] == ["run-0", "run-1"]


def test_every_scalar_series_round_trips_as_float32(exported):
    store_path, written = exported
    with RunStore(store_path, readonly=True) as store:
        for info, directory in zip(store.runs(), written):
            events = _read(directory)
            layers = store.series_layers(info.run_id)
            expected_tags = {tag(layer, metric) for layer in layers
                             for metric in store.metrics(info.run_id, layer=layer)}  # fmt: skip
            assert set(events.Tags()["scalars"]) == expected_tags
            for layer in layers:
                for metric in store.metrics(info.run_id, layer=layer):
                    steps, values = store.series(info.run_id, layer, metric)
                    read = events.Scalars(tag(layer, metric))
                    np.testing.assert_array_equal([e.step for e in read], steps)
                    np.testing.assert_array_equal(
                        np.array([e.value for e in read], np.float32), values.astype(np.float32)
                    )


def test_histograms_keep_bins_and_counts(exported):
    store_path, written = exported
    with RunStore(store_path, readonly=True) as store:
        stored = store.histograms("run-0", HOSTILE_NAME, "act_hist")
    read = _read(written[0]).Histograms(f"act_hist/{HOSTILE_NAME}")
    assert [event.step for event in read] == [step for step, _, _ in stored] == [0, 10]
    for event, (_, edges, counts) in zip(read, stored):
        value = event.histogram_value
        np.testing.assert_array_equal(value.bucket_limit, edges[1:])
        np.testing.assert_array_equal(value.bucket, counts)
        assert value.num == counts.sum()


def test_histogram_summary_against_hand_computed_values():
    edges = np.array([-1.0, 0.0, 1.0, 2.0, 3.0])
    counts = np.array([0, 2, 0, 1])
    summary = histogram_summary(edges, counts)
    assert summary["min"] == 0.0 and summary["max"] == 3.0
    assert summary["num"] == 3
    assert summary["sum"] == 2 * 0.5 + 2.5
    assert summary["sum_squares"] == 2 * 0.25 + 6.25
    assert histogram_summary(edges, np.zeros(4)) is None
    with pytest.raises(ValueError, match="B\\+1 edges"):
        histogram_summary(edges, np.ones(5))


def test_live_writer_uses_the_same_tags(tmp_path):
    with TensorBoardWriter(tmp_path / "live") as writer:
        writer.add_scalars(3, [("", "loss", 0.25), ("fc.weight", "grad_norm", 2.0)])
        writer.add_histogram(3, "fc", "act_hist", HISTOGRAM_EDGES, np.arange(32))
    events = _read(tmp_path / "live")
    assert events.Scalars("loss")[0].value == 0.25
    assert events.Scalars("grad_norm/fc.weight")[0].step == 3
    assert list(events.Histograms("act_hist/fc")[0].histogram_value.bucket) == list(range(32))


def test_run_directory_names_are_safe():
    assert run_directory_name("mlp/naive-init") == "mlp_naive-init"
    assert run_directory_name("../../etc") == "etc"
    assert run_directory_name("<>") == "run"


def test_unknown_run_and_missing_store(tmp_path, exported):
    store_path, _ = exported
    with pytest.raises(StoreError, match="no run"):
        export_tensorboard(store_path, tmp_path / "tb", run="nope")
    with pytest.raises(StoreError, match="no run store"):
        export_tensorboard(tmp_path / "missing.sqlite", tmp_path / "tb")
