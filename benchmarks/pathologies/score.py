"""Scores of the benchmark: per-case verdicts and the summary (pure functions of results).

- detected (fault case): some warning/error finding has a code in the case's ``expected``.
- root named first: the first warning/error finding in ``diagnose()``'s story (roots, each
  followed by what it explains) has the root code (or one of the case's ``also_root``).
- false alarm (healthy case): any warning/error finding (info findings do not count).
- recall = detected / fault cases that ran and proved their fault (status ``ok``);
  false-alarm rate = alarmed / healthy cases that ran and trained (status ``ok``);
  root-first rate = root named first / the same fault cases. ``invalid`` cases (the fault did
  not happen, or a healthy run did not train) and crashes/timeouts are counted apart.
- The same rates are given per split: ``calibration`` cases (the thresholds were tuned with
  them in view) and ``holdout`` cases (written after the thresholds were frozen).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any

from pathologies.case import CALIBRATION, HEALTHY

SEVERE = ("warning", "error")


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """Add ``severe_codes``, ``alarmed``, ``detected``, ``root_named``, ``root_first``."""
    severe: list[str] = []
    for f in result.get("findings", []):
        if f["severity"] in SEVERE and f["code"] not in severe:
            severe.append(f["code"])
    out = dict(result)
    out["severe_codes"] = severe
    out["alarmed"] = bool(severe)
    if result.get("category") != HEALTHY:
        expected, root = set(result.get("expected", ())), result.get("root")
        roots = {root, *result.get("also_root", ())}
        out["detected"] = any(c in expected for c in severe)
        out["root_named"] = bool(roots & set(severe))
        out["root_first"] = bool(severe) and severe[0] in roots
    return out


# The statistic each rule judges (``RunContext.evidence``) and the threshold it is judged by:
# the calibration table puts the healthy runs' extreme beside the threshold.
EVIDENCE_THRESHOLDS: dict[str, tuple[str, str]] = {
    # evidence key: (threshold field, direction of "worse": max or min)
    "grad_norm_total": ("exploding_grad_norm", "max"),
    "grad_vanishing_ratio[other]": ("vanishing_grad_ratio", "min"),
    "grad_vanishing_ratio[adam]": ("vanishing_grad_ratio_adam", "min"),
    "saturated_fraction": ("saturated_fraction", "max"),
    "dead_fraction": ("dead_fraction", "max"),
    "depth_per_layer_log10": ("per_layer_std_ratio", "max"),
    "logit_abs_max": ("logit_abs_limit", "max"),
    "update_to_data_log10_median_max[adam]": ("update_to_data_log10_high_adam", "max"),
    "update_to_data_log10_median_max[sgd]": ("update_to_data_log10_high", "max"),
    "update_to_data_log10_median_max[other]": ("update_to_data_log10_high", "max"),
    "update_to_data_log10_median_min[adam]": ("update_to_data_log10_low", "min"),
    "update_to_data_log10_median_min[sgd]": ("update_to_data_log10_low", "min"),
    "weight_growth": ("lr_weight_growth", "max"),
    "loss_spike_z": ("loss_spike_sigmas", "max"),
    "loss_spike_undone": ("loss_spike_min_undone", "max"),
    "loss_divergence_ratio": ("loss_divergence_ratio", "max"),
    "plateau_improvement": ("plateau_min_improvement", "min"),
    "input_rms_max": ("input_rms_high", "max"),
    "input_rms_spread": ("input_rms_spread", "max"),
}


def calibration(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per judged statistic: the healthy runs' most extreme value (and which case), the
    threshold, and how many fault cases went past it."""
    from vitalstats.monitor.config import Thresholds

    defaults = Thresholds()
    table: dict[str, dict[str, Any]] = {}
    for key, (field, worst) in EVIDENCE_THRESHOLDS.items():
        threshold = getattr(defaults, field)
        if field == "per_layer_std_ratio":
            import math

            threshold = math.log10(threshold)
        pick = max if worst == "max" else min
        healthy = [(r["evidence"][key], r["name"]) for r in results
                   if r.get("category") == HEALTHY and key in r.get("evidence", {})]  # fmt: skip
        faults = [r["evidence"][key] for r in results
                  if r.get("category") != HEALTHY and key in r.get("evidence", {})]  # fmt: skip
        beyond = sum((v > threshold) if worst == "max" else (v < threshold) for v in faults)
        value, case = pick(healthy) if healthy else (None, None)
        table[key] = {"threshold_field": field, "threshold": threshold, "worse": worst,
                      "healthy_extreme": value, "healthy_case": case, "healthy_runs": len(healthy),
                      "fault_runs": len(faults), "fault_runs_beyond": beyond}  # fmt: skip
    return table


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def rates(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Recall, false-alarm rate and root-first rate of ``results`` (and the counts)."""
    healthy = [r for r in results if r.get("category") == HEALTHY and r["status"] == "ok"]
    faults = [r for r in results if r.get("category") != HEALTHY and r["status"] == "ok"]
    return {
        "healthy": len(healthy),
        "faults": len(faults),
        "detected": sum(r["detected"] for r in faults),
        "alarmed": sum(r["alarmed"] for r in healthy),
        "root_first": sum(r["root_first"] for r in faults),
        "recall": _rate(sum(r["detected"] for r in faults), len(faults)),
        "false_alarm_rate": _rate(sum(r["alarmed"] for r in healthy), len(healthy)),
        "root_first_rate": _rate(sum(r["root_first"] for r in faults), len(faults)),
        "not_ok": sum(r["status"] != "ok" for r in results),
    }


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Confusion table, recall, false-alarm rate, root-first rate, crashes, cost; the
    rates per split (calibration cases against held-out ones)."""
    healthy = [r for r in results if r.get("category") == HEALTHY and r["status"] == "ok"]
    faults = [r for r in results if r.get("category") != HEALTHY and r["status"] == "ok"]
    alarms = sum(r["alarmed"] for r in healthy)
    detected = sum(r["detected"] for r in faults)
    other = sum(r["alarmed"] and not r["detected"] for r in faults)
    per_category: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in faults:
        row = per_category[r["category"]]
        row[0] += 1
        row[1] += r["detected"]
        row[2] += r["root_first"]
    costs = [r["cost"]["ratio"] for r in results if r.get("cost")]
    status = Counter(r["status"] for r in results)
    return {
        "cases": len(results),
        "status": dict(status),
        "confusion": {
            "healthy": {"silent": len(healthy) - alarms, "alarmed": alarms},
            "fault": {
                "silent": len(faults) - detected - other,
                "alarmed_other_code": other,
                "detected": detected,
            },
        },
        "recall": _rate(detected, len(faults)),
        "false_alarm_rate": _rate(alarms, len(healthy)),
        "root_first_rate": _rate(sum(r["root_first"] for r in faults), len(faults)),
        "root_named_rate": _rate(sum(r["root_named"] for r in faults), len(faults)),
        "crashes": status.get("crash", 0) + status.get("timeout", 0),
        "invalid": status.get("invalid", 0),
        "cost_mean_ratio": statistics.fmean(costs) if costs else None,
        "cost_median_ratio": statistics.median(costs) if costs else None,
        "cost_max_ratio": max(costs) if costs else None,
        "per_category": {
            k: {"cases": v[0], "detected": v[1], "root_first": v[2]}
            for k, v in sorted(per_category.items())
        },
        "splits": {
            split: rates([r for r in results if r.get("split", CALIBRATION) == split])
            for split in sorted({r.get("split", CALIBRATION) for r in results})
        },
        "calibration": calibration(results),
    }
