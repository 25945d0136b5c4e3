"""The pathology benchmark's runner end to end on tiny cases, its scoring, and its registry."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "benchmarks" / "pathologies" / "run.py"
TINY = Path(__file__).with_name("pathology_cases.py")
sys.path.insert(0, str(ROOT / "benchmarks"))

from pathologies.case import CATEGORIES, HEALTHY, load_cases  # noqa: E402
from pathologies.run import select  # noqa: E402
from pathologies.score import summarise, verdict  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("pathologies") / "result.json"
    cmd = [sys.executable, str(RUNNER), "--case-file", str(TINY), "--cases", "tiny_*"]
    cmd += ["--jobs", "2", "--cost-steps", "10", "--timeout", "120", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def by_name(run: dict) -> dict[str, dict]:
    return {c["name"]: c for c in run["cases"]}


@pytest.mark.slow
def test_runner_writes_meta_summary_and_one_record_per_case(tiny_run: dict) -> None:
    assert set(tiny_run) == {"meta", "summary", "cases"}
    assert sorted(by_name(tiny_run)) == [
        "tiny_crash", "tiny_fault_nan_input", "tiny_healthy", "tiny_invalid",
    ]  # fmt: skip
    assert tiny_run["meta"]["torch"] and tiny_run["meta"]["jobs"] == 2
    for case in tiny_run["cases"]:
        assert {"name", "arch", "category", "expected", "root", "status", "wall_s"} <= set(case)


@pytest.mark.slow
def test_healthy_case_trains_and_records_findings_proof_and_cost(tiny_run: dict) -> None:
    healthy = by_name(tiny_run)["tiny_healthy"]
    assert healthy["status"] == "ok"
    assert healthy["proof"]["holds"] is True and healthy["proof"]["value"] <= 0.5
    assert isinstance(healthy["alarmed"], bool)
    assert healthy["alarmed"] == any(f["severity"] != "info" for f in healthy["findings"])
    assert healthy["cost"]["steps"] == 10 and healthy["cost"]["ratio"] > 0


@pytest.mark.slow
def test_fault_case_is_scored_against_its_expected_and_root_codes(tiny_run: dict) -> None:
    fault = by_name(tiny_run)["tiny_fault_nan_input"]
    assert fault["status"] == "ok"
    assert fault["expected"] == ["NONFINITE_INPUT"] and fault["root"] == "NONFINITE_INPUT"
    nan_input = [f for f in fault["findings"] if f["code"] == "NONFINITE_INPUT"]
    assert nan_input and nan_input[0]["step"] == 5
    assert fault["detected"] is True
    assert fault["root_first"] == (fault["severe_codes"][0] == "NONFINITE_INPUT")


@pytest.mark.slow
def test_a_fault_that_did_not_happen_is_invalid_not_a_miss(tiny_run: dict) -> None:
    invalid = by_name(tiny_run)["tiny_invalid"]
    assert invalid["status"] == "invalid" and invalid["proof"]["holds"] is False


@pytest.mark.slow
def test_a_crash_is_recorded_with_its_phase_and_the_run_goes_on(tiny_run: dict) -> None:
    crash = by_name(tiny_run)["tiny_crash"]
    assert crash["status"] == "crash" and crash["phase"] == "train"
    assert "deliberate failure at step 3" in crash["error"]
    assert "RuntimeError" in crash["traceback"]


@pytest.mark.slow
def test_summary_counts_only_valid_cases_in_the_rates(tiny_run: dict) -> None:
    s = tiny_run["summary"]
    assert s["cases"] == 4 and s["crashes"] == 1 and s["invalid"] == 1
    assert s["recall"] == 1.0  # the one valid fault case, detected
    healthy_alarmed = by_name(tiny_run)["tiny_healthy"]["alarmed"]
    assert s["false_alarm_rate"] == float(healthy_alarmed)
    assert s["confusion"]["fault"] == {"silent": 0, "alarmed_other_code": 0, "detected": 1}


def test_timeouts_count_as_crashes_and_other_codes_are_not_detections() -> None:
    results = [
        {"name": "a", "category": "dead_relu", "expected": ["DEAD_RELU"], "root": "DEAD_RELU",
         "status": "ok", "findings": [{"code": "LOSS_SPIKE", "severity": "warning"},
                                      {"code": "DEAD_RELU", "severity": "info"}]},
        {"name": "b", "category": HEALTHY, "expected": [], "root": None, "status": "ok",
         "findings": [{"code": "BIAS_BEFORE_NORM", "severity": "info"}]},
        {"name": "c", "category": "dead_relu", "status": "timeout"},
    ]  # fmt: skip
    scored = [verdict(r) for r in results]
    assert scored[0]["detected"] is False and scored[0]["alarmed"] is True
    assert scored[1]["alarmed"] is False
    s = summarise(scored)
    assert s["crashes"] == 1 and s["recall"] == 0.0 and s["false_alarm_rate"] == 0.0
    assert s["confusion"]["fault"]["alarmed_other_code"] == 1


def test_rates_are_given_per_split() -> None:
    def fault(name: str, split: str, found: str) -> dict:
        return {"name": name, "category": "dead_relu", "expected": ["DEAD_RELU"],
                "root": "DEAD_RELU", "status": "ok", "split": split,
                "findings": [{"code": found, "severity": "warning"}]}  # fmt: skip

    results = [fault("a", "calibration", "DEAD_RELU"), fault("b", "holdout", "LOSS_SPIKE"),
               fault("c", "holdout", "DEAD_RELU"),
               {"name": "d", "category": HEALTHY, "expected": [], "root": None, "status": "ok",
                "split": "holdout", "findings": [{"code": "LOSS_SPIKE", "severity": "warning"}]}]  # fmt: skip
    s = summarise([verdict(r) for r in results])
    assert s["splits"]["calibration"]["recall"] == 1.0
    held = s["splits"]["holdout"]
    assert (held["faults"], held["detected"], held["recall"]) == (2, 1, 0.5)
    assert (held["healthy"], held["false_alarm_rate"]) == (1, 1.0)
    assert s["recall"] == 2 / 3  # the overall rates pool both splits


def test_holdout_cases_are_marked_and_cover_healthy_and_faults() -> None:
    registry = load_cases()
    held = [c for c in registry.values() if c.split == "holdout"]
    assert all(c.name.startswith("holdout_") for c in held)
    assert sum(c.category == HEALTHY for c in held) >= 5
    assert len({c.category for c in held if c.category != HEALTHY}) >= 12


def test_case_patterns_are_globs_or_substrings() -> None:
    names = ["healthy_gpt2", "lr_high_gpt2", "lr_low_mlp"]
    assert select(names, "lr_*") == ["lr_high_gpt2", "lr_low_mlp"]
    assert select(names, "gpt2,mlp") == names
    assert select(names, None) == names


def test_registry_has_40_cases_and_every_fault_category_on_two_architectures() -> None:
    registry = load_cases()
    assert len(registry) >= 40
    archs: dict[str, set[str]] = defaultdict(set)
    for cls in registry.values():
        archs[cls.category].add(cls.arch.split(" ")[0] + cls.arch.split(" ")[-1])
        if cls.category != HEALTHY:
            assert cls.root_code() in cls.expected_codes(), cls.name
    for category in CATEGORIES:
        assert len(archs[category]) >= 2, (category, archs[category])
