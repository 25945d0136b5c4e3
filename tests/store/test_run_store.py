"""RunStore's public API: what goes in comes out (checked against plain Python records),
runs are kept apart and found by id or name, and misuse gets a clear error."""

from __future__ import annotations

import enum
import gc
import math
import socket
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vitalstats as vs
from vitalstats.store import LayerInfo, RunInfo, StoreError


@pytest.fixture
def store(tmp_path):
    with vs.RunStore(tmp_path / "run.sqlite") as opened:
        yield opened


def test_the_top_level_export_is_the_store_class():
    assert vs.RunStore is vs.store.RunStore


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=30, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(-5, 10**12), finite_or_not), max_size=40))
def test_series_returns_every_step_sorted_with_the_last_value_written(tmp_path_factory, writes):
    """Oracle: a dict step -> last value; NaN, +-Inf and huge steps survive exactly."""
    path = tmp_path_factory.mktemp("series") / "run.sqlite"
    with vs.RunStore(path, flush_interval=0) as store:
        run = store.start_run()
        expected: dict[int, float] = {}
        for index, (step, value) in enumerate(writes):
            store.add_scalars(run, step, [("layer", "metric", value)])
            expected[step] = value
            if index % 7 == 3:
                store.flush()  # duplicates across flushes also keep the last value
    with vs.RunStore(path, readonly=True) as reader:
        steps, values = reader.series(run, "layer", "metric")
    assert steps.dtype == np.int64 and values.dtype == np.float64
    assert steps.tolist() == sorted(expected)
    want = np.array([expected[step] for step in sorted(expected)], dtype=np.float64)
    np.testing.assert_array_equal(values, want)  # NaN == NaN here; -0.0 == 0.0


def test_sqlite_drops_the_sign_of_zero_and_nan_payloads(store):
    """Documented limits of SQLite REAL: -0.0 reads back as 0.0, any NaN as the plain NaN."""
    run = store.start_run()
    store.add_scalars(run, 0, [("", "zero", -0.0), ("", "nan", -math.nan)])
    zero, nan = store.series(run, "", "zero")[1][0], store.series(run, "", "nan")[1][0]
    assert zero == 0.0 and not np.signbit(zero)
    assert math.isnan(nan)


def test_float32_and_tensor_values_are_stored_exactly(store):
    run = store.start_run()
    x = torch.randn(5, generator=torch.Generator().manual_seed(1))
    rows = [("net.0", f"m{i}", value) for i, value in enumerate(x)]  # 0-d float32 tensors
    store.add_scalars(run, 0, rows)
    got = [store.series(run, "net.0", f"m{i}")[1][0] for i in range(5)]
    assert got == x.double().tolist()


def test_an_unwritten_series_is_empty_with_the_right_dtypes(store):
    run = store.start_run()
    steps, values = store.series(run, "nowhere", "nothing")
    assert steps.shape == values.shape == (0,)
    assert steps.dtype == np.int64 and values.dtype == np.float64


def test_runs_record_config_environment_times_and_status(store):
    config = {"model": "MLP(784-10)", "optimizer": {"name": "Adam", "betas": (0.9, 0.999)},
              "device": torch.device("cpu"), "lr": 1e-3}  # fmt: skip
    run = store.start_run("exp1", config=config)
    info = store.run(run)
    assert isinstance(info, RunInfo)
    assert (info.run_id, info.name, info.status, info.ended_at) == (run, "exp1", "running", None)
    assert info.config == {"model": "MLP(784-10)", "optimizer": {"name": "Adam",
                           "betas": [0.9, 0.999]}, "device": "cpu", "lr": 1e-3}  # fmt: skip
    assert info.environment["hostname"] == socket.gethostname()
    assert info.environment["torch_version"] == torch.__version__
    assert info.environment["vitalstats_version"] == vs.__version__
    store.end_run(run, status="crashed")
    ended = store.runs()[0]
    assert ended.status == "crashed"
    assert ended.started_at <= ended.updated_at and ended.ended_at >= ended.started_at


def test_updated_at_advances_with_each_commit(store):
    run = store.start_run()
    before = store.run(run).updated_at
    store.add_scalars(run, 0, [("", "loss", 1.0)])
    store.flush()
    assert store.run(run).updated_at >= before


def test_several_runs_in_one_file_stay_apart(store):
    first, second = store.start_run("a"), store.start_run("b")
    store.add_scalars(first, 0, [("", "loss", 1.0)])
    store.add_scalars(second, 0, [("", "loss", 2.0)])
    store.add_findings(second, [{"code": "C", "severity": "info", "layer": None, "step": None,
                                 "message": "m", "fix": "f"}])  # fmt: skip
    assert store.series("a", "", "loss")[1].tolist() == [1.0]
    assert store.series("b", "", "loss")[1].tolist() == [2.0]
    assert store.findings("a") == [] and len(store.findings("b")) == 1
    assert [info.name for info in store.runs()] == ["a", "b"]


def test_names_are_unique_and_default_to_the_run_id(store):
    first = store.start_run("exp")
    second = store.start_run("exp")
    third = store.start_run()
    assert [store.run(r).name for r in (first, second, third)] == ["exp", "exp-2", "run-3"]
    assert store.run("exp-2").run_id == second
    assert store.run("3").run_id == third  # a string of digits falls back to the run_id


def test_an_unknown_run_lists_the_known_ones(store):
    store.start_run("alpha")
    store.start_run("beta")
    for unknown in ("gamma", 99):
        with pytest.raises(StoreError, match=r"known runs: 1 'alpha', 2 'beta'"):
            store.series(unknown, "", "loss")
    with pytest.raises(StoreError, match="known runs"):
        store.add_scalars(42, 0, [("", "loss", 1.0)])
    with pytest.raises(TypeError, match="run must be a run_id"):
        store.findings(1.5)
    with pytest.raises(TypeError, match="run must be a run_id"):
        store.add_scalars([1], 0, [])


def test_an_empty_store_says_it_has_no_runs(store):
    with pytest.raises(StoreError, match="has no runs yet"):
        store.findings("anything")


def test_layers_come_back_in_the_order_added(store):
    run = store.start_run()
    layers = [LayerInfo("net.0", "Linear", 1, 7850), LayerInfo("net.1", "ReLU", 1, 0)]
    store.add_layers(run, layers[:1])
    store.add_layers(run, layers[1:])
    assert store.layers(run) == layers
    with pytest.raises(TypeError, match=r"item 0 is tuple; expected vs.store.LayerInfo"):
        store.add_layers(run, [("net.2", "Linear", 1, 0)])


def test_metrics_and_series_layers_list_what_was_written(store):
    run = store.start_run()
    store.add_scalars(run, 0, [("", "loss", 1.0), ("net.0", "act_std", 1.0),
                               ("net.0.weight", "grad_norm", 2.0)])  # fmt: skip
    store.add_histogram(run, 0, "net.0", "act_hist", [0.0, 1.0], [4])
    assert store.metrics(run) == ["act_std", "grad_norm", "loss"]
    assert store.metrics(run, "net.0") == ["act_std"]
    assert store.metrics(run, kind="histogram") == ["act_hist"]
    assert store.series_layers(run) == ["", "net.0", "net.0.weight"]
    assert store.series_layers(run, "grad_norm") == ["net.0.weight"]
    assert store.series_layers(run, kind="histogram") == ["net.0"]


def test_histograms_round_trip_sorted_by_step(store):
    run = store.start_run()
    generator = np.random.default_rng(0)
    written = {}
    for step in (20, 0, 10):
        counts, edges = np.histogram(generator.normal(size=100), bins=8)
        store.add_histogram(run, step, "net.0", "act_hist", edges, counts)
        written[step] = (edges, counts)
    read = store.histograms(run, "net.0", "act_hist")
    assert [step for step, _, _ in read] == [0, 10, 20]
    for step, edges, counts in read:
        np.testing.assert_array_equal(edges, written[step][0])
        np.testing.assert_array_equal(counts, written[step][1])
    assert store.histograms(run, "net.0", "grad_hist") == []


class Severity(enum.Enum):
    WARNING = "warning"


@dataclass(frozen=True)
class FakeFinding:
    code: str
    severity: Severity
    layer: str | None
    step: int | None
    message: str
    fix: str


def test_findings_from_objects_and_dicts_keep_order_and_fields(store):
    run = store.start_run()
    store.add_findings(run, [FakeFinding("DEAD_RELU", Severity.WARNING, "net.1", 40, "m1", "f1")])
    store.add_findings(run, [{"code": "LINT", "severity": "info", "layer": None, "step": None,
                              "message": "m2", "fix": "f2", "extra": "ignored"}])  # fmt: skip
    assert store.findings(run) == [
        {"code": "DEAD_RELU", "severity": "warning", "layer": "net.1", "step": 40,
         "message": "m1", "fix": "f1"},
        {"code": "LINT", "severity": "info", "layer": None, "step": None, "message": "m2",
         "fix": "f2"},
    ]  # fmt: skip
    with pytest.raises(TypeError, match=r"finding 0 \(dict\) has no 'fix'"):
        store.add_findings(run, [{"code": "X", "severity": "s", "layer": "", "step": 1,
                                  "message": "m"}])  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "error", "message"),
    [
        ([("a", "m")], TypeError, r"row 1 is \('a', 'm'\); expected a \(layer, metric, value\)"),
        ([(None, "m", 1.0)], TypeError, r"layer must be a str .*got layer=None"),
        ([("a", "", 1.0)], TypeError, r"metric a non-empty str"),
        ([("a", "m", torch.ones(3))], TypeError, r"row 1 \('a', 'm'\).*shape \(3,\)"),
    ],
)
def test_bad_scalar_rows_are_refused_before_anything_is_buffered(store, rows, error, message):
    run = store.start_run()
    with pytest.raises(error, match=message):
        store.add_scalars(run, 0, [("a", "ok", 1.0), *rows])
    assert store.metrics(run) == []  # the good row before the bad one was not buffered


def test_end_run_validates_its_status(store):
    run = store.start_run()
    with pytest.raises(ValueError, match=r"status must be one of \('finished', 'crashed'"):
        store.end_run(run, status="done")
    store.end_run(run, status="interrupted")
    assert store.run(run).status == "interrupted"


def test_bad_start_run_arguments(store):
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        store.start_run("")
    with pytest.raises(TypeError, match="config must be a dict, got list"):
        store.start_run(config=[1, 2])


def test_a_readonly_store_refuses_writes(tmp_path):
    path = tmp_path / "run.sqlite"
    vs.RunStore(path).close()
    with vs.RunStore(path, readonly=True) as reader:
        with pytest.raises(StoreError, match="readonly=True"):
            reader.start_run()
        with pytest.raises(StoreError, match="readonly=True"):
            reader.add_scalars(1, 0, [])


def test_a_closed_store_says_so(tmp_path):
    store = vs.RunStore(tmp_path / "run.sqlite")
    run = store.start_run()
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="is closed"):
        store.runs()
    with pytest.raises(StoreError, match="is closed"):
        store.add_scalars(run, 0, [("", "loss", 1.0)])
    assert "closed" in repr(store)


def test_constructor_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="flush_interval must be >= 0"):
        vs.RunStore(tmp_path / "x.sqlite", flush_interval=-1)


def test_garbage_collection_flushes_buffered_rows(tmp_path):
    path = tmp_path / "run.sqlite"
    store = vs.RunStore(path, flush_interval=0)
    run = store.start_run()
    store.add_scalars(run, 5, [("", "loss", 0.25)])
    del store
    gc.collect()
    with vs.RunStore(path, readonly=True) as reader:
        assert reader.series(run, "", "loss")[1].tolist() == [0.25]


def test_interpreter_exit_flushes_buffered_rows(tmp_path):
    path = tmp_path / "run.sqlite"
    code = (
        "import sys, vitalstats as vs\n"
        "store = vs.RunStore(sys.argv[1], flush_interval=3600)\n"
        "run = store.start_run('exit')\n"
        "store.add_scalars(run, 1, [('', 'loss', 0.5)])\n"
        "STORE = store  # still referenced at exit: the atexit finaliser must flush\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
    with vs.RunStore(path, readonly=True) as reader:
        assert reader.series("exit", "", "loss")[1].tolist() == [0.5]
        assert reader.run("exit").status == "running"  # no end_run: status tells the truth


def test_numpy_scalars_and_integer_values(store):
    run = store.start_run()
    store.add_scalars(np.int64(run), np.int32(2), [("", "a", np.float16(0.5)), ("", "b", 3)])
    assert store.series(run, "", "a")[1].tolist() == [0.5]
    assert store.series(run, "", "b")[1].tolist() == [3.0]
    assert not math.isnan(store.series(run, "", "b")[1][0])


@settings(max_examples=25, deadline=None)
@given(
    steps=st.lists(st.integers(-50, 10**9), min_size=1, max_size=30, unique=True),
    start=st.integers(-60, 10**9),
)
def test_series_from_a_start_step_is_the_tail_of_the_whole_series(tmp_path_factory, steps, start):
    """Oracle: the full series filtered to steps >= start."""
    with vs.RunStore(tmp_path_factory.mktemp("tail") / "run.sqlite") as store:
        run = store.start_run()
        for step in steps:
            store.add_scalars(run, step, [("", "loss", step * 0.5)])
        all_steps, all_values = store.series(run, "", "loss")
        tail_steps, tail_values = store.series(run, "", "loss", start=start)
    keep = all_steps >= start
    np.testing.assert_array_equal(tail_steps, all_steps[keep])
    np.testing.assert_array_equal(tail_values, all_values[keep])
    assert tail_steps.dtype == np.int64 and tail_values.dtype == np.float64


def test_latest_gives_each_series_its_last_step_and_value(store):
    """Oracle: the last element of each full series."""
    run = store.start_run("latest")
    other = store.start_run("other")
    rng = np.random.default_rng(0)
    written = {}
    for layer, metric in [("", "loss"), ("fc", "act_std"), ("fc.weight", "grad_norm")]:
        steps = np.sort(rng.choice(1000, size=20, replace=False))
        for step in steps:
            store.add_scalars(run, int(step), [(layer, metric, float(rng.normal()))])
        written[(layer, metric)] = store.series(run, layer, metric)
    store.add_scalars(run, 5, [("fc", "act_dead_fraction", float("nan"))])
    store.add_scalars(other, 10**6, [("", "loss", 9.0)])  # another run's rows stay out
    store.add_histogram(run, 2000, "fc", "act_std", np.array([0.0, 1.0]), np.array([3]))
    latest = store.latest(run)
    assert set(latest) == {*written, ("fc", "act_dead_fraction")}
    for key, (steps, values) in written.items():
        assert latest[key] == (int(steps[-1]), float(values[-1]))
    assert latest[("fc", "act_dead_fraction")][0] == 5
    assert math.isnan(latest[("fc", "act_dead_fraction")][1])
    assert set(store.latest(run, ["loss", "grad_norm"])) == {
        ("", "loss"),
        ("fc.weight", "grad_norm"),
    }
    assert store.latest(run, []) == {}
    with pytest.raises(StoreError, match="no run 'ghost'"):
        store.latest("ghost")
