"""The doctor's terminal output: a results table and a findings table (rich)."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from vitalstats.doctor.train import RunResult

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def _field(finding: object, name: str) -> object:
    return finding.get(name) if isinstance(finding, dict) else getattr(finding, name, None)


def results_table(results: Sequence[RunResult], with_lessons: bool = True) -> Table:
    """One row per configuration: final losses, test accuracy, steps, time, finding count."""
    table = Table(title="Configurations", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("run", style="bold", no_wrap=True)
    if with_lessons:
        table.add_column("what it shows")
    for column in ("train\nloss", "test\nloss", "test\naccuracy", "steps", "time", "findings"):
        table.add_column(column, justify="right", no_wrap=True)
    for result in results:
        table.add_row(
            Text(result.name),
            *([Text(result.lesson)] if with_lessons else []),
            f"{result.final_train_loss:.4f}",
            f"{result.test_loss:.4f}",
            f"{result.test_accuracy:.1%}",
            str(result.steps),
            f"{result.seconds:.1f}s",
            str(len(result.findings)),
        )
    return table


def group_findings(findings: Sequence[object]) -> list[tuple[object, list[str]]]:
    """Findings with the same code and message text pattern folded together: one entry per
    code, most severe first, with every layer it was seen at (the first finding speaks for all).
    """
    groups: dict[str, tuple[object, list[str]]] = {}
    for finding in findings:
        code = str(_field(finding, "code"))
        layer = str(_field(finding, "layer") or "")
        if code not in groups:
            groups[code] = (finding, [])
        if layer and layer not in groups[code][1]:
            groups[code][1].append(layer)
    return sorted(groups.values(), key=lambda g: (_SEVERITY_ORDER.get(str(_field(g[0], "severity")), 3),
                                                 _field(g[0], "step") or 0))  # fmt: skip


def findings_text(findings: Sequence[object], max_layers: int = 6) -> Table:
    """Grouped findings as a borderless grid (wrapped text keeps its indent): severity, then
    code, layers, step, the first message and its fix."""
    grid = Table.grid(padding=(0, 1, 1, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(ratio=1)
    for finding, layers in group_findings(findings):
        severity = str(_field(finding, "severity"))
        body = Text(str(_field(finding, "code")), style="bold")
        if layers:
            more = len(layers) - max_layers
            body.append(
                "  at " + ", ".join(layers[:max_layers]) + (f" +{more} more" if more > 0 else "")
            )
        step = _field(finding, "step")
        if step is not None:
            body.append(f" (step {step})", style="dim")
        body.append(f"\n{_field(finding, 'message')}")
        fix = _field(finding, "fix")
        if fix:
            body.append(f"\nfix: {fix}", style="green")
        grid.add_row(Text(severity, style=_SEVERITY_STYLE.get(severity, "")), body)
    return grid


def print_findings(console: Console, results: Sequence[RunResult]) -> None:
    """Each run's findings, grouped by code (the HTML report lists every one)."""
    console.print(Text("Findings", style="bold"))
    for result in results:
        if result.findings:
            console.print(Text(result.name, style="bold underline"))
            console.print(findings_text(result.findings))


def print_summary(console: Console, results: Sequence[RunResult]) -> None:
    wide = console.width >= 140
    console.print(results_table(results, with_lessons=wide))
    if not wide:
        lessons = Table.grid(padding=(0, 2))
        for result in results:
            lessons.add_row(Text(result.name, style="bold"), Text(result.lesson))
        console.print(lessons)
    if any(result.findings for result in results):
        print_findings(console, results)
    else:
        console.print("No findings: every configuration looks healthy.")
