"""``vitalstats watch``: a live terminal view of a run while it is being written."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from vitalstats.commands import CommandError, store_errors

EXAMPLES = """\
examples:
  vitalstats watch runs/exp1.sqlite                 # the run being written; Ctrl-C to stop
  vitalstats watch runs/exp1.sqlite --run exp1 --interval 5
  vitalstats watch runs/exp1.sqlite --once          # one frame, then exit (also on a finished run)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "watch",
        help="live terminal view of a run being written: loss, findings, per-layer health",
        description=(
            "Follows one run of a store while another process writes it: latest step, loss and "
            "its trend, steps per second, the findings so far (root cause first) and a compact "
            "per-layer table (activation std, dead and saturated share, gradient norm, "
            "update:data), refreshed as the store grows. Stops by itself when the run ends. "
            "Without --run it follows the most recently written run that is still running "
            "(else the newest)."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("store", type=Path, help="run store (.sqlite) written by vs.Monitor")
    parser.add_argument("--run", default=None, help="run name or id (default: the live one)")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument(
        "--interval", type=_positive, default=2.0, metavar="SECONDS",
        help="seconds between refreshes (default: 2, the store's commit interval)",
    )  # fmt: skip
    parser.add_argument(
        "--layers", type=int, default=20, metavar="N",
        help="at most N rows in the layer table (default: 20)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from vitalstats.report.live import RunWatcher, frame
    from vitalstats.store import RunStore

    if args.layers < 0:
        raise CommandError(f"--layers must be >= 0, got {args.layers}")
    console = Console()
    with store_errors():
        store = RunStore(args.store, readonly=True)
        try:
            try:
                watcher = RunWatcher(store, args.run)
            except ValueError as error:
                raise CommandError(str(error)) from None
            if args.once:
                console.print(frame(watcher.read(), max_layers=args.layers))
                return 0
            return follow(watcher, console, args.interval, args.layers)
        finally:
            store.close()


def follow(
    watcher: Any, console: Any, interval: float, max_layers: int = 20, max_frames: int | None = None
) -> int:
    """Redraw every ``interval`` seconds until the run is no longer "running" (or Ctrl-C, or
    ``max_frames`` frames); the last frame stays on screen."""
    from rich.live import Live

    from vitalstats.report.live import frame

    snapshot = watcher.read()
    frames = 1
    try:
        with Live(frame(snapshot, max_layers), console=console, auto_refresh=False) as live:
            while snapshot.info.status == "running" and (max_frames is None or frames < max_frames):
                time.sleep(interval)
                snapshot = watcher.read()
                live.update(frame(snapshot, max_layers), refresh=True)
                frames += 1
    except KeyboardInterrupt:  # the normal way to stop watching
        return 0
    if snapshot.info.status != "running":
        console.print(f"run {snapshot.info.name!r} is {snapshot.info.status}", highlight=False)
    return 0
