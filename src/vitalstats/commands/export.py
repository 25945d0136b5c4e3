"""``vitalstats export``: write a run store's series and histograms for TensorBoard."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitalstats.commands import CommandError, store_errors

EXAMPLES = """\
examples:
  vitalstats export runs/exp1.sqlite --tensorboard runs/tb && tensorboard --logdir runs/tb
  vitalstats export runs/exp1.sqlite --tensorboard runs/tb --run exp1
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a run store to TensorBoard event files",
        description=(
            "Writes every scalar series (tag <metric>/<layer>, or <metric> for run-level) and "
            "histogram of the chosen runs to DIR/<run name>/ as TensorBoard event files. "
            "Needs the tensorboard package (pip install 'vitalstats[tensorboard]')."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("store", type=Path, help="run store (.sqlite) written by vs.Monitor")
    parser.add_argument(
        "--tensorboard", type=Path, required=True, metavar="DIR", help="TensorBoard log directory"
    )
    parser.add_argument(
        "--run", action="append", default=None, help="run name or id (repeatable; default: all)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from vitalstats.store.tensorboard import _summary_writer_class, export_tensorboard

        _summary_writer_class()
    except ImportError as error:
        raise CommandError(str(error)) from None
    if args.tensorboard.exists() and not args.tensorboard.is_dir():
        raise CommandError(f"--tensorboard {args.tensorboard} exists and is not a directory")
    with store_errors():
        directories = export_tensorboard(args.store, args.tensorboard, run=args.run)
    for directory in directories:
        print(f"wrote {directory}")
    print(f"view with: tensorboard --logdir {args.tensorboard}")
    return 0
