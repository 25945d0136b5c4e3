"""Finding records and the one documented table of codes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import vitalstats as vs
from vitalstats.monitor import CODES, MonitorConfig, Thresholds
from vitalstats.monitor.config import due

DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitor.md"


def test_finding_is_a_frozen_record_with_a_known_code():
    finding = vs.Finding("DEAD_RELU", "warning", "net.1", 3, "msg.", "fix.")
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.step = 4
    assert finding.to_dict() == {
        "code": "DEAD_RELU",
        "severity": "warning",
        "layer": "net.1",
        "step": 3,
        "message": "msg.",
        "fix": "fix.",
        "layers": [],
        "consequences": [],
    }
    assert str(finding) == "[warning] DEAD_RELU net.1 at step 3: msg. Fix: fix."
    with pytest.raises(ValueError, match="unknown code 'NOPE'"):
        vs.Finding("NOPE", "error", "", None, "", "")


def test_docs_have_one_table_listing_every_code_once():
    text = DOCS.read_text()
    rows = re.findall(r"^\| `([A-Z_]+)` \| (info|warning|error) \|", text, flags=re.M)
    assert sorted(code for code, _ in rows) == sorted(CODES)
    assert dict(rows) == {code: severity for code, (severity, _) in CODES.items()}


def test_docs_name_every_threshold():
    text = DOCS.read_text()
    for field in dataclasses.fields(Thresholds):
        assert f"`{field.name}`" in text, field.name


def test_everything_preset_and_schedule():
    config = MonitorConfig.everything(flush_every=7)
    every = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name.endswith("_every")
    }
    assert every.pop("flush_every") == 7 and set(every.values()) == {1}
    assert [due(3, s) for s in range(4)] == [True, False, False, True]
    assert not due(0, 0)
    with pytest.raises(ValueError, match="flush_every"):
        MonitorConfig(flush_every=0)


def test_docs_metric_table_is_generated_from_the_registry():
    from vitalstats.monitor.registry import markdown_table

    text = DOCS.read_text()
    start, end = "<!-- metrics:start -->\n", "<!-- metrics:end -->"
    assert start in text and end in text
    table = text[text.index(start) + len(start) : text.index(end)]
    assert table == markdown_table(), "regenerate with: python -m vitalstats.monitor.registry"
