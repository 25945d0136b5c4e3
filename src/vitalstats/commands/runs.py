"""``vitalstats runs``: list the runs of a run store."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from vitalstats.commands import store_errors

EXAMPLES = """\
examples:
  vitalstats runs runs/exp1.sqlite
  vitalstats runs runs/exp1.sqlite --json > runs.json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="list the runs in a run store",
        description=(
            "Lists every run of a store: id, name, status, start time (UTC), duration, last "
            "recorded step and number of findings. --json prints every field, times as Unix "
            "seconds."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("store", type=Path, help="run store (.sqlite) written by vs.Monitor")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def _time(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def run(args: argparse.Namespace) -> int:
    import json

    from vitalstats.store import RunStore

    with store_errors(), RunStore(args.store, readonly=True) as store:
        rows = []
        for info in store.runs():
            steps, _ = store.series(info.run_id, "", "loss")
            rows.append({
                "run_id": info.run_id, "name": info.name, "status": info.status,
                "started_at": info.started_at, "ended_at": info.ended_at,
                "last_step": int(steps[-1]) if len(steps) else None,
                "findings": len(store.findings(info.run_id)),
            })  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"{args.store} has no runs yet")
        return 0
    print(format_runs(rows))
    return 0


def format_runs(rows: list[dict]) -> str:
    """A plain aligned listing (one line per run, whatever the terminal width)."""
    name_width = max(4, *(len(row["name"]) for row in rows))
    header = f"{'id':>4}  {'name':<{name_width}}  {'status':<11}  {'started (UTC)':<16}  {'duration':>8}  {'last step':>9}  {'findings':>8}"
    lines = [header]
    for row in rows:
        ended = row["ended_at"]
        duration = "" if ended is None else f"{ended - row['started_at']:.1f}s"
        last = "" if row["last_step"] is None else str(row["last_step"])
        lines.append(
            f"{row['run_id']:>4}  {row['name']:<{name_width}}  {row['status']:<11}  "
            f"{_time(row['started_at']):<16}  {duration:>8}  {last:>9}  {row['findings']:>8}"
        )
    return "\n".join(lines)
