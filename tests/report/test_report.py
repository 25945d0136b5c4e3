"""write_report: sections, self-containment, escaping, run selection, live runs, bad stores."""

from __future__ import annotations

import base64
import re
import sqlite3
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from tests.report.synthetic import HOSTILE_NAME, make_store
from vitalstats.report import write_report
from vitalstats.store import LayerInfo, RunStore, StoreError

SECTION_IDS = (
    "run-metadata", "findings", "loss", "activation-histograms", "activations-by-depth",
    "gradient-norms", "update-to-data", "batchnorm-drift", "adam-moments", "comparison",
)  # fmt: skip


class _Collector(HTMLParser):
    """The stdlib HTML parser as an oracle for what a browser would build."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(text: str) -> _Collector:
    collector = _Collector()
    collector.feed(text)
    return collector


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    directory = tmp_path_factory.mktemp("report")
    store = make_store(directory / "runs.sqlite", runs=2, steps=30)
    out = write_report(store, directory / "report.html")
    return store, out.read_text(encoding="utf-8")


def test_every_section_is_present_in_reading_order(report):
    _, text = report
    parsed = _parse(text)
    ids = [attrs["id"] for tag, attrs in parsed.tags if tag == "section"]
    assert ids == list(SECTION_IDS)


def test_report_is_self_contained(report):
    _, text = report
    parsed = _parse(text)
    for tag, attrs in parsed.tags:
        for attribute in ("src", "href"):
            value = attrs.get(attribute)
            if value is not None:
                assert value.startswith(("data:image/", "#")), (tag, value[:80])
        assert tag not in {"link", "iframe", "object", "embed"}
    assert not re.search(
        r"https?://(?!www\.w3\.org/)", text.replace("\\", "")
    )  # SVG namespaces only


def test_every_figure_is_valid_inlined_svg(report):
    _, text = report
    images = [attrs["src"] for tag, attrs in _parse(text).tags if tag == "img"]
    assert len(images) >= 10
    for source in images:
        prefix = "data:image/svg+xml;base64,"
        assert source.startswith(prefix)
        root = ElementTree.fromstring(base64.b64decode(source[len(prefix) :]))
        assert root.tag.endswith("svg")


def test_hostile_names_render_as_text(report):
    _, text = report
    assert HOSTILE_NAME not in text
    assert "<b>gain</b>" not in text  # a finding's fix is text, not markup
    parsed = _parse(text)
    assert [tag for tag, _ in parsed.tags].count("script") == 1  # only the page's own
    assert [tag for tag, _ in parsed.tags].count("b") == 0
    visible = "".join(parsed.text)
    assert f"{HOSTILE_NAME} is saturated" in visible
    assert "fix: use a <b>gain</b>" in visible


def test_hostile_name_is_escaped_inside_figures(report):
    _, text = report
    svgs = [base64.b64decode(attrs["src"].split(",", 1)[1]).decode()
            for tag, attrs in _parse(text).tags if tag == "img"]  # fmt: skip
    assert not any(HOSTILE_NAME in svg for svg in svgs)
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in svg for svg in svgs)


def test_findings_table_lists_every_stored_finding_most_severe_first(report):
    store_path, text = report
    with RunStore(store_path, readonly=True) as store:
        stored = [f for info in store.runs() for f in store.findings(info.run_id)]
    section = text.split('id="findings"', 1)[1].split("</section>", 1)[0]
    severities = re.findall(r'<span class="badge (\w+)">', section)
    assert len(severities) == len(stored) == 4
    assert severities == sorted(severities, key=["error", "warning", "info"].index)


def test_metadata_shows_the_recorded_step_range(report):
    _, text = report
    section = text.split('id="run-metadata"', 1)[1].split("</section>", 1)[0]
    assert section.count("0…29 (30 recorded)") == 2
    assert "finished" in section


def test_one_run_selected_by_name_or_id(tmp_path):
    store = make_store(tmp_path / "runs.sqlite", runs=2, steps=5)
    by_name = write_report(store, tmp_path / "a.html", run="run-1").read_text()
    by_id = write_report(store, tmp_path / "b.html", run=2).read_text()
    for text in (by_name, by_id):
        assert "run-1" in text and "run-0" not in text


def test_unknown_run_names_the_known_ones(tmp_path):
    store = make_store(tmp_path / "runs.sqlite", runs=1, steps=3)
    with pytest.raises(StoreError, match=r"no run 'nope'.*'run-0'"):
        write_report(store, tmp_path / "r.html", run="nope")
    assert not (tmp_path / "r.html").exists()


def test_missing_foreign_and_newer_stores_raise_store_error(tmp_path):
    with pytest.raises(StoreError, match="no run store"):
        write_report(tmp_path / "missing.sqlite", tmp_path / "r.html")
    text_file = tmp_path / "notes.sqlite"
    text_file.write_text("not a database")
    with pytest.raises(StoreError, match="not a SQLite file"):
        write_report(text_file, tmp_path / "r.html")
    newer = make_store(tmp_path / "newer.sqlite", runs=1, steps=2)
    with sqlite3.connect(newer) as connection:
        connection.execute("PRAGMA user_version = 999")
    with pytest.raises(StoreError, match="newer"):
        write_report(newer, tmp_path / "r.html")


def test_report_of_a_run_still_being_written(tmp_path):
    path = tmp_path / "live.sqlite"
    writer = RunStore(path, flush_interval=0)
    try:
        run_id = writer.start_run("live")
        writer.add_layers(run_id, [LayerInfo("fc", "Linear", 1, 3)])
        writer.add_scalars(run_id, 0, [("", "loss", 1.0), ("fc.weight", "grad_norm", 0.5)])
        writer.flush()
        first = write_report(path, tmp_path / "first.html").read_text()
        assert "running (still being written)" in first
        assert "0…0 (1 recorded)" in first
        writer.add_scalars(run_id, 1, [("", "loss", 0.5), ("fc.weight", "grad_norm", 0.25)])
        writer.flush()
        second = write_report(path, tmp_path / "second.html").read_text()
        assert "0…1 (2 recorded)" in second
    finally:
        writer.close()


def test_empty_store_and_sparse_runs_render_with_notes(tmp_path):
    path = tmp_path / "sparse.sqlite"
    with RunStore(path) as store:
        store.start_run("only-loss")
        store.add_scalars(1, 0, [("", "loss", float("nan"))])
        store.add_scalars(1, 1, [("", "loss", float("inf"))])
        store.add_scalars(1, 2, [("", "loss", 0.5)])
    text = write_report(path, tmp_path / "r.html").read_text()
    assert "No findings" in text
    assert "No activation histograms recorded" in text
    empty = tmp_path / "empty.sqlite"
    RunStore(empty).close()
    assert "no runs" in write_report(empty, tmp_path / "e.html").read_text()


def test_names_matplotlib_would_misread_still_render(tmp_path):
    """``$`` starts mathtext and a leading ``_`` hides a legend entry in matplotlib."""
    path = tmp_path / "names.sqlite"
    with RunStore(path) as store:
        run_id = store.start_run("price $x$ and $unbalanced")
        store.add_layers(run_id, [LayerInfo("_orig_mod.fc", "Linear", 1, 3)])
        for step in range(3):
            store.add_scalars(run_id, step, [("_orig_mod.fc.weight", "grad_norm", 1.0 + step),
                                             ("", "loss", 1.0)])  # fmt: skip
    text = write_report(path, tmp_path / "r.html").read_text()
    svgs = [base64.b64decode(attrs["src"].split(",", 1)[1]).decode()
            for tag, attrs in _parse(text).tags if tag == "img"]  # fmt: skip
    assert any("_orig_mod.fc.weight" in svg for svg in svgs)  # in the legend, not hidden
    assert any("price $x$ and $unbalanced" in svg for svg in svgs)  # literal, not mathtext


def test_histogram_steps_pick_the_nearest_recorded_step(tmp_path):
    store = make_store(tmp_path / "runs.sqlite", runs=1, steps=30)  # histograms at 0, 10, 20
    text = write_report(store, tmp_path / "r.html", histogram_steps=[9, 19]).read_text()
    titles = re.findall(r"run-0: activations at step (\d+)</figcaption>", text)
    assert titles == ["10", "20"]
    default = write_report(store, tmp_path / "d.html").read_text()
    assert re.findall(r"run-0: activations at step (\d+)</figcaption>", default) == ["0", "20"]


def test_write_report_replaces_the_file_atomically(tmp_path):
    store = make_store(tmp_path / "runs.sqlite", runs=1, steps=2)
    out = tmp_path / "r.html"
    out.write_text("old")
    write_report(store, out)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert not list(tmp_path.glob("*.tmp"))


def test_importing_the_report_package_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, vitalstats.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_synthetic_oracle_values_round_trip(tmp_path):
    """The report reads exactly what was written (the data behind the loss figure)."""
    from tests.report.synthetic import loss_at
    from vitalstats.report.collect import open_runs

    store = make_store(tmp_path / "runs.sqlite", runs=1, steps=12)
    handle, runs = open_runs(store)
    try:
        steps, values = runs[0].series("", "loss")
        np.testing.assert_array_equal(steps, np.arange(12))
        np.testing.assert_array_equal(values, loss_at(np.arange(12), 2.0))
        assert runs[0].layers_with("grad_norm") == [
            "net.0.bias",
            "net.0.weight",
            "net.1.weight",
            "net.4.weight",
        ]
    finally:
        handle.close()


WRITER = """
import sys, time
from vitalstats.store import RunStore
store = RunStore(sys.argv[1], flush_interval=0)
run = store.start_run("live-elsewhere")
for step in range(5):
    store.add_scalars(run, step, [("", "loss", 1.0 / (step + 1))])
store.flush()
print("ready", flush=True)
time.sleep(60)
"""


def test_report_while_another_process_is_writing(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "live.sqlite"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        text = write_report(path, tmp_path / "r.html").read_text()
        assert "running (still being written)" in text
        assert "0…4 (5 recorded)" in text
        assert writer.poll() is None  # the writer is still alive
    finally:
        writer.kill()
        writer.wait()
