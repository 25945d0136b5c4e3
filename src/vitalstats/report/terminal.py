"""Findings in a terminal (rich), told as a story: each root cause with the findings it
explains nested under it. Used by ``vitalstats doctor``, ``lint`` and ``watch``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.table import Table
from rich.text import Text

from vitalstats.report.story import told, where

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _headline(finding: Any, max_layers: int) -> Text:
    text = Text(str(finding.code), style="bold")
    layers = where(finding, max_layers)
    if layers:
        text.append(f"  at {layers}")
    if finding.step is not None:
        text.append(f" (step {finding.step})", style="dim")
    return text


def findings_text(
    findings: Iterable[Any], max_layers: int = 6, details: bool = True, limit: int | None = None
) -> Table:
    """A borderless grid, root causes first (``vitalstats.monitor.causes``): severity, code,
    layers, first step, message and fix; each consequence on an indented line below its root
    ("explains ..."), with its message when ``details``. ``limit`` keeps the first roots."""
    grid = Table.grid(padding=(0, 1, 1 if details else 0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(ratio=1)
    roots = told(findings)
    shown = roots if limit is None else roots[:limit]
    for root in shown:
        body = _headline(root, max_layers)
        if details:
            body.append(f"\n{root.message}")
            if root.fix:
                body.append(f"\nfix: {root.fix}", style="green")
        for consequence in root.consequences:
            body.append("\n  └ explains ", style="dim")
            body.append_text(_headline(consequence, max_layers))
            body.append(
                f" [{consequence.severity}]", style=SEVERITY_STYLE.get(consequence.severity, "")
            )
            if details and consequence.message:
                body.append(f"\n    {consequence.message}", style="dim")
        grid.add_row(Text(root.severity, style=SEVERITY_STYLE.get(root.severity, "")), body)
    if len(shown) < len(roots):
        grid.add_row(Text(""), Text(f"+{len(roots) - len(shown)} more root cause(s)", style="dim"))
    return grid
