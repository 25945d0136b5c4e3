"""told(): whatever holds findings (Finding objects, store rows, a story already told) gives
the same story as vitalstats.monitor.causes on the raw findings; the terminal nests it."""

from __future__ import annotations

from rich.console import Console

from vitalstats.monitor import story
from vitalstats.monitor.findings import make_finding
from vitalstats.report.story import count, told, where
from vitalstats.report.terminal import findings_text

RAW = [
    make_finding("NONFINITE_LOSS", "", 42, "loss is NaN", "lower the lr"),
    make_finding("LR_TOO_HIGH", "", 35, "updates too large", "lower the lr"),
    make_finding("DEAD_RELU", "net.1", 50, "dead units", "use LeakyReLU"),
    make_finding("DEAD_RELU", "net.3", 52, "dead units", "use LeakyReLU"),
    make_finding("BIAS_BEFORE_NORM", "net.0", None, "bias cancelled", "bias=False"),
]


def _shape(findings):
    return [
        (f.code, f.all_layers, f.step, [(c.code, c.all_layers) for c in f.consequences])
        for f in findings
    ]


def test_store_rows_tell_the_same_story_as_the_findings():
    rows = [
        {k: getattr(f, k) for k in ("code", "severity", "layer", "step", "message", "fix")}
        for f in RAW
    ]
    assert _shape(told(rows)) == _shape(story(RAW))


def test_a_story_told_again_loses_and_doubles_nothing():
    once = told(RAW)
    assert _shape(told(once)) == _shape(once)
    assert count(once) == count(RAW) == 4  # DEAD_RELU on two layers is one entry


def test_unknown_codes_from_a_newer_store_are_kept():
    rows = [
        {
            "code": "SOME_NEW_CODE",
            "severity": "info",
            "layer": "x",
            "step": 1,
            "message": "m",
            "fix": "f",
        }
    ]
    assert [f.code for f in told(rows)] == ["SOME_NEW_CODE"]


def test_where_lists_layers_and_counts_the_rest():
    grouped = told([make_finding("DEAD_RELU", f"net.{i}", i, "dead", "fix") for i in range(9)])[0]
    assert where(grouped, max_layers=3) == "net.0, net.1, net.2 +6 more"


def test_the_terminal_nests_consequences_under_their_root():
    console = Console(width=120, record=True)
    console.print(findings_text(RAW))
    lines = console.export_text().splitlines()
    root = next(i for i, line in enumerate(lines) if "LR_TOO_HIGH" in line)
    nested = [i for i, line in enumerate(lines) if "└ explains" in line]
    assert [lines[i].split("explains ")[1].split()[0] for i in nested] == [
        "NONFINITE_LOSS",
        "DEAD_RELU",
    ]
    assert all(i > root for i in nested)
    bias = next(i for i, line in enumerate(lines) if "BIAS_BEFORE_NORM" in line)
    assert bias > max(nested) and lines[bias].lstrip().startswith("info")
