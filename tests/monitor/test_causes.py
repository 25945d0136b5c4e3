"""story(): findings grouped by code, root causes first, cascades attached."""

from __future__ import annotations

import vitalstats as vs
from vitalstats.monitor import CODES, story
from vitalstats.monitor.causes import EXPLAINS, ROOT_ORDER, flatten
from vitalstats.monitor.findings import make_finding


def _f(code: str, layer: str = "", step: int | None = 10) -> vs.Finding:
    return make_finding(code, layer, step, f"{code} message.", f"{code} fix.")


def test_every_code_has_a_place_in_the_story_order():
    assert sorted(ROOT_ORDER) == sorted(CODES)
    assert len(set(ROOT_ORDER)) == len(ROOT_ORDER)
    for cause, effects in EXPLAINS.items():
        assert cause in CODES and set(effects) <= set(CODES), cause


def test_a_cascade_hangs_under_its_root_in_step_order():
    raw = [
        _f("NONFINITE_LOSS", step=42),
        _f("GRAD_EXPLODING", step=30),
        _f("NONFINITE_FORWARD", "net.2", step=41),
        _f("LR_TOO_HIGH", step=35),
        _f("DEAD_RELU", "net.1", step=50),
    ]
    told = story(raw)
    assert [f.code for f in told] == ["LR_TOO_HIGH"]
    assert [c.code for c in told[0].consequences] == [
        "GRAD_EXPLODING",
        "NONFINITE_FORWARD",
        "NONFINITE_LOSS",
        "DEAD_RELU",
    ]
    assert sorted(f.code for f in flatten(told)) == sorted(f.code for f in raw)


def test_without_the_root_the_next_cause_leads():
    told = story([_f("NONFINITE_LOSS", step=42), _f("GRAD_EXPLODING", step=30)])
    assert [f.code for f in told] == ["GRAD_EXPLODING"]
    assert [c.code for c in told[0].consequences] == ["NONFINITE_LOSS"]


def test_the_same_code_on_many_layers_is_one_finding_listing_them():
    told = story([_f("DEAD_RELU", "b", step=60), _f("DEAD_RELU", "a", step=50)])
    assert len(told) == 1
    assert told[0].layer == "a" and told[0].layers == ("a", "b") and told[0].step == 50
    assert "a, b" in str(told[0])


def test_unrelated_roots_are_ordered_by_severity_then_fundamentality():
    told = story([_f("BIAS_BEFORE_NORM", "conv", None), _f("DEAD_RELU", "r"), _f("LOSS_SPIKE")])
    assert [f.code for f in told] == ["DEAD_RELU", "LOSS_SPIKE", "BIAS_BEFORE_NORM"]
    # an error root outranks a warning root
    told = story([_f("DEAD_RELU", "r"), _f("NONFINITE_INPUT")])
    assert [f.code for f in told] == ["NONFINITE_INPUT", "DEAD_RELU"]


def test_store_rows_and_unknown_codes_are_accepted():
    rows = [
        {"code": "LOSS_SPIKE", "severity": "warning", "layer": "", "step": 5,
         "message": "m", "fix": "f"},
        {"code": "FROM_THE_FUTURE", "severity": "warning", "layer": "x", "step": 3,
         "message": "m", "fix": "f"},
    ]  # fmt: skip
    told = story(rows)
    assert {f.code for f in told} == {"LOSS_SPIKE", "FROM_THE_FUTURE"}
    back = vs.Finding.from_dict(told[0].to_dict())
    assert back == told[0]
