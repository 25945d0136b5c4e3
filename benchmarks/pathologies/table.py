"""Printing the benchmark's results with rich: the per-case table and the summary."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from pathologies.case import HEALTHY

MARK = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}


def _codes(result: dict[str, Any]) -> str:
    seen: dict[str, str] = {}
    for f in result.get("findings", []):
        seen.setdefault(f["code"], f["severity"][0].upper())
    return " ".join(f"{sev}:{code}" for code, sev in seen.items()) or "-"


def _root(result: dict[str, Any]) -> str:
    if result["root_first"]:
        return "[green]first[/]"
    return "[yellow]named[/]" if result["root_named"] else "[red]no[/]"


def _proof(result: dict[str, Any]) -> str:
    """The proof's value and bar (the figure's name is in the JSON), or the error."""
    proof = result.get("proof")
    if not proof:
        return (result.get("error") or "")[:60]
    value = proof["value"]
    shown = f"{value:.3g}" if isinstance(value, float | int) else str(value)
    return f"{shown} ({proof['threshold']})"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def print_cases(console: Console, results: list[dict[str, Any]]) -> None:
    table = Table(title="Pathology benchmark: per case", show_lines=False, expand=False)
    for column in (
        "case",
        "architecture",
        "category",
        "root",
        "codes raised (E/W/I)",
        "status",
        "detected",
        "root code",
        "proof (value, bar)",
        "cost",
    ):
        table.add_column(column, overflow="fold", no_wrap=column == "case")
    for r in results:
        healthy = r.get("category") == HEALTHY
        ok = r["status"] == "ok"
        if healthy:
            detected = (
                "[red]ALARM[/]" if ok and r["alarmed"] else ("[green]silent[/]" if ok else "-")
            )
            first = "-"
        else:
            detected = MARK[r["detected"]] if ok else "-"
            first = _root(r) if ok else "-"
        status = {"ok": "ok", "invalid": "[yellow]INVALID[/]"}.get(
            r["status"], f"[red]{r['status'].upper()}[/]"
        )
        proof = _proof(r)
        cost = f"{r['cost']['ratio']:.3f}x" if r.get("cost") else "-"
        table.add_row(
            r["name"],
            r.get("arch", "?"),
            r.get("category", "?"),
            r.get("root") or "-",
            _codes(r),
            status,
            detected,
            first,
            proof,
            cost,
        )
    console.print(table)


def print_summary(console: Console, s: dict[str, Any]) -> None:
    c = s["confusion"]
    table = Table(title="Confusion (cases with status ok)")
    for column in ("", "silent", "alarmed, other code", "detected / alarmed"):
        table.add_column(column)
    table.add_row("healthy", str(c["healthy"]["silent"]), "-", str(c["healthy"]["alarmed"]))
    f = c["fault"]
    table.add_row("fault", str(f["silent"]), str(f["alarmed_other_code"]), str(f["detected"]))
    console.print(table)
    per = Table(title="Per fault category")
    for column in ("category", "cases", "detected", "root first"):
        per.add_column(column)
    for name, v in s["per_category"].items():
        per.add_row(name, str(v["cases"]), str(v["detected"]), str(v["root_first"]))
    console.print(per)
    cost = (
        "-"
        if s["cost_mean_ratio"] is None
        else (
            f"mean {s['cost_mean_ratio']:.3f}x, median {s['cost_median_ratio']:.3f}x, "
            f"max {s['cost_max_ratio']:.3f}x"
        )
    )
    console.print(
        f"cases {s['cases']} {s['status']}\n"
        f"recall {_pct(s['recall'])} (target >= 95 %)   "
        f"false-alarm rate {_pct(s['false_alarm_rate'])} (target <= 2 %)\n"
        f"root named first {_pct(s['root_first_rate'])} (target >= 90 %)   "
        f"root named anywhere {_pct(s['root_named_rate'])}\n"
        f"crashes/timeouts {s['crashes']}   invalid {s['invalid']}   monitor cost {cost}"
    )
    splits = Table(title="Per split (holdout: written after the thresholds were frozen)")
    for column in ("split", "healthy", "fault", "recall", "false alarms", "root first", "not ok"):
        splits.add_column(column)
    for name, v in s.get("splits", {}).items():
        splits.add_row(
            name, str(v["healthy"]), str(v["faults"]),
            f"{_pct(v['recall'])} ({v['detected']}/{v['faults']})",
            f"{_pct(v['false_alarm_rate'])} ({v['alarmed']}/{v['healthy']})",
            f"{_pct(v['root_first_rate'])} ({v['root_first']}/{v['faults']})", str(v["not_ok"]),
        )  # fmt: skip
    console.print(splits)


def print_calibration(console: Console, summary: dict[str, Any]) -> None:
    """Each judged statistic: the threshold and the healthy runs' most extreme value."""
    table = Table(title="Calibration: healthy extremes against the thresholds")
    for column in ("statistic", "threshold", "healthy extreme (case)", "faults past it"):
        table.add_column(column)
    for key, row in summary.get("calibration", {}).items():
        value = row["healthy_extreme"]
        shown = "-" if value is None else f"{value:.3g} ({row['healthy_case']})"
        sign = ">" if row["worse"] == "max" else "<"
        table.add_row(key, f"{sign} {row['threshold']:.3g} ({row['threshold_field']})", shown,
                      f"{row['fault_runs_beyond']}/{row['fault_runs']}")  # fmt: skip
    console.print(table)
