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
    "run-metadata", "findings", "loss", "activation-heatmaps", "gradient-heatmaps",
    "activation-histograms", "activations-by-depth", "gradient-norms", "update-to-data",
    "batchnorm-drift", "adam-moments", "comparison",
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


def _section(text: str, anchor: str) -> str:
    return text.split(f'<section id="{anchor}">', 1)[1].split("</section>", 1)[0]


def test_findings_are_told_root_cause_first_with_consequences_nested(report):
    """LR_TOO_HIGH explains ACT_SATURATED and GRAD_EXPLODING (vitalstats.monitor.causes.EXPLAINS):
    they are nested rows under it in step order; BIAS_BEFORE_NORM (info) is a root of its own,
    after the error's cascade."""
    store_path, text = report
    with RunStore(store_path, readonly=True) as store:
        stored = [(info.name, f) for info in store.runs() for f in store.findings(info.run_id)]
    section = _section(text, "findings")
    rows = re.findall(r"<tr class='(root|consequence)'>(.*?)</tr>", section, re.S)
    assert len(rows) == len(stored) == 8  # one row per code and run here
    for run in ("run-0", "run-1"):
        told = [(kind, re.search(r"<code>(\w+)</code>", row).group(1))
                for kind, row in rows if f"<td>{run}</td>" in row]  # fmt: skip
        assert told == [("root", "LR_TOO_HIGH"), ("consequence", "ACT_SATURATED"),
                        ("consequence", "GRAD_EXPLODING"), ("root", "BIAS_BEFORE_NORM")]  # fmt: skip
    for _, finding in stored:
        assert f"<code>{finding['code']}</code>" in section
    assert "Findings (8)" in text


def test_a_code_seen_on_many_layers_is_one_row_listing_them(tmp_path):
    path = tmp_path / "many.sqlite"
    with RunStore(path) as store:
        run = store.start_run("many")
        store.add_findings(run, [
            {"code": "DEAD_RELU", "severity": "warning", "layer": f"net.{i}", "step": 10 + i,
             "message": f"dead units in net.{i}", "fix": "lower the lr"} for i in (1, 3, 5)
        ])  # fmt: skip
    section = _section(write_report(path, tmp_path / "r.html").read_text(), "findings")
    rows = re.findall(r"<tr class='root'>(.*?)</tr>", section, re.S)
    assert len(rows) == 1
    assert "<td>net.1, net.3, net.5</td>" in rows[0] and "<td>11</td>" in rows[0]


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


def _figures(section: str) -> dict[str, str]:
    """caption -> the figure's SVG data URI, for each figure of a section."""
    found = re.findall(r'<img src="([^"]+)" alt="[^"]*" loading="eager"><figcaption>([^<]*)</figcaption>',
                       section)  # fmt: skip
    return {caption: uri for uri, caption in found}


def test_heat_maps_come_per_layer_group_under_headings_that_say_so(report):
    _, text = report
    parsed_titles = [t for t in re.findall(r"<h2>([^<]*)</h2>", text)]
    assert "Activation histograms over time" in parsed_titles
    assert "Gradient histograms over time" in parsed_titles
    activations = _figures(_section(text, "activation-heatmaps"))
    gradients = _figures(_section(text, "gradient-heatmaps"))
    for run in ("run-0", "run-1"):
        for group in ("activation functions", "weighted layers (pre-activations)",
                      "normalisation layers"):  # fmt: skip
            assert f"{run}: activation histograms over steps of the {group}" in activations
        for group in ("weights", "biases", "normalisation parameters"):
            assert f"{run}: gradient histograms over steps of the {group}" in gradients


def test_gradient_heat_map_pixels_follow_the_stored_bins(report):
    """synthetic.gradient_bin says where every gradient of net.0.weight was counted at each
    step: in the drawn panel that bin is the brightest pixel of the step's column."""
    from tests.report.synthetic import HISTOGRAM_EVERY, gradient_bin

    _, text = report
    uri = _figures(_section(text, "gradient-heatmaps"))[
        "run-0: gradient histograms over steps of the weights"
    ]
    svg = ElementTree.fromstring(base64.b64decode(uri.split(",", 1)[1]))
    first_panel = next(svg.iter("{http://www.w3.org/2000/svg}image")).get("href")
    import io

    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(first_panel.split(",", 1)[1]))))
    brightness = pixels.astype(int).sum(axis=2)
    assert pixels.shape[:2] == (64, 3)  # 64 bins x snapshots at steps 0, 10, 20 (30 steps)
    for column in range(3):
        bin_index = gradient_bin(0, column * HISTOGRAM_EVERY)
        assert np.argmax(brightness[:, column]) == 63 - bin_index  # top row = last bin


def test_a_step_with_nan_or_inf_outputs_is_marked_on_its_layer(report):
    from tests.report.synthetic import NONFINITE_STEP

    _, text = report
    uri = _figures(_section(text, "activation-heatmaps"))[
        "run-0: activation histograms over steps of the activation functions"
    ]
    svg = base64.b64decode(uri.split(",", 1)[1]).decode()
    assert svg.count(f"<title>NaN/Inf at step {NONFINITE_STEP}</title>") == 1  # net.2 only


def test_gradient_histograms_at_chosen_steps_sit_beside_the_activation_ones(report):
    _, text = report
    captions = list(_figures(_section(text, "activation-histograms")))
    assert captions[:4] == ["run-0: activations at step 0", "run-0: gradients at step 0",
                            "run-0: activations at step 20", "run-0: gradients at step 20"]  # fmt: skip


def test_many_layers_become_one_heat_map_row_per_layer(tmp_path):
    path = tmp_path / "deep.sqlite"
    names = [f"net.{i}.weight" for i in range(40)]
    with RunStore(path) as store:
        run = store.start_run("deep")
        store.add_layers(run, [LayerInfo(f"net.{i}", "Linear", 1, 4) for i in range(40)])
        for step in range(0, 50, 5):
            store.add_scalars(run, step, [(n, "grad_norm", 10.0 ** -(i / 10)) for i, n in enumerate(names)]
                              + [("", "loss", 1.0)])  # fmt: skip
    section = _section(write_report(path, tmp_path / "r.html").read_text(), "gradient-norms")
    (caption,) = _figures(section)
    assert caption.startswith("deep: grad_norm: 40 layers or parameters, one row each")


def test_run_level_metrics_this_version_does_not_know_are_still_drawn(tmp_path):
    path = tmp_path / "new.sqlite"
    with RunStore(path) as store:
        run = store.start_run("newer")
        for step in range(5):
            store.add_scalars(run, step, [("", "loss", 1.0), ("", "amp_scale", 2.0**16)])
    section = _section(write_report(path, tmp_path / "r.html").read_text(), "comparison")
    assert "amp_scale of every run" in _figures(section)
