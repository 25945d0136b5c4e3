"""The HTML report: one self-contained, offline file drawn from a run store.

    from vitalstats.report import write_report
    write_report("runs/exp1.sqlite", "report.html")          # every run, overlaid
    write_report("runs/exp1.sqlite", "report.html", run="exp1")
    export_tensorboard("runs/exp1.sqlite", "runs/tb")        # then: tensorboard --logdir runs/tb

The report reads only the store file (never live hooks), so it works on a finished run, a
crashed one, or one another process is still writing. matplotlib is imported on first use.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitalstats.store.tensorboard import TensorBoardWriter, export_tensorboard

__all__ = ["TensorBoardWriter", "export_tensorboard", "render_report", "write_report"]

RunSelector = int | str | Sequence[int | str] | None


def render_report(
    store_path: str | os.PathLike[str],
    run: RunSelector = None,
    *,
    histogram_steps: Sequence[int] | None = None,
) -> str:
    """The report of ``run`` (None = every run of the store) as an HTML string."""
    from vitalstats import __version__
    from vitalstats.report.collect import open_runs
    from vitalstats.report.html import page
    from vitalstats.report.sections import all_sections

    store, runs = open_runs(store_path, run)
    try:
        sections = all_sections(runs, histogram_steps)
    finally:
        store.close()
    names = ", ".join(r.name for r in runs[:4]) + (
        f" and {len(runs) - 4} more" if len(runs) > 4 else ""
    )
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"vitalstats report: {names or 'no runs'}"
    subtitle = f"store {Path(store_path).name} · {len(runs)} run(s) · drawn {when} · vitalstats {__version__}"
    return page(title, subtitle, sections)


def write_report(
    store_path: str | os.PathLike[str] | Any,
    out_path: str | os.PathLike[str],
    run: RunSelector = None,
    *,
    histogram_steps: Sequence[int] | None = None,
) -> Path | None:
    """Write the report of ``run`` (None = all runs) in ``store_path`` to ``out_path``.

    ``store_path`` may also be a live ``vs.Monitor`` with a store: it is flushed first and
    its run is reported. Under torch.distributed that flush is a collective, so call it on
    every rank: rank 0 writes and returns the path, the other ranks return None.
    ``histogram_steps`` picks the steps of the histograms-at-a-step figures (the nearest
    recorded step is used; default the first and the last). Returns the written path.
    Raises ``vitalstats.store.StoreError`` for a missing/foreign/newer store or unknown run.
    """
    if hasattr(store_path, "flush") and hasattr(store_path, "store_path"):
        monitor = store_path
        monitor.flush()
        if monitor.store_path is None:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
                return None
            raise ValueError(
                "write_report: this monitor has no run store; create it with "
                "vs.Monitor(model, optimizer=opt, store='runs/exp.sqlite') to make reports"
            )
        monitor.sync_store()
        store_path, run = monitor.store_path, monitor.run_id
    out = Path(out_path)
    text = render_report(store_path, run, histogram_steps=histogram_steps)
    temporary = out.with_name(out.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, out)  # a reader never sees a half-written report
    return out
