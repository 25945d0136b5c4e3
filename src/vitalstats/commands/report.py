"""``vitalstats report``: draw the HTML report of a run store."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitalstats.commands import check_output_file, store_errors

EXAMPLES = """\
examples:
  vitalstats report runs/exp1.sqlite                    # every run, overlaid -> vitalstats-report.html
  vitalstats report runs/exp1.sqlite -o exp1.html --run exp1
  vitalstats report runs/exp1.sqlite --run 1 --run 2 --histogram-steps 0,500,1000
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run store",
        description=(
            "Writes one offline HTML file (figures inlined) from a run store: findings told "
            "root cause first with fixes, loss with a rolling-quantile band, activation and "
            "gradient histograms over time (heat maps per layer group) and at chosen steps, "
            "statistics by depth, gradient norms, update:data ratios, BatchNorm drift and Adam "
            "moments. Works on a run that is still being written."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("store", type=Path, help="run store (.sqlite) written by vs.Monitor")
    parser.add_argument(
        "-o", "--out", type=Path, default=Path("vitalstats-report.html"),
        help="HTML file to write (default: vitalstats-report.html)",
    )  # fmt: skip
    parser.add_argument(
        "--run", action="append", default=None,
        help="run name or id to include (repeatable; default: every run)",
    )  # fmt: skip
    parser.add_argument(
        "--histogram-steps", type=_steps, default=None, metavar="STEPS",
        help="comma-separated steps for the histograms at chosen steps (default: first, last)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def _steps(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 0,100,200, got {text!r}"
        ) from None


def run(args: argparse.Namespace) -> int:
    from vitalstats.report import write_report

    check_output_file(args.out)
    with store_errors():
        path = write_report(
            args.store, args.out, run=args.run, histogram_steps=args.histogram_steps
        )
    print(f"wrote {path}")
    return 0
