"""The doctor's terminal output: a results table and each run's findings told as a story
(root causes first, what they explain nested under them; ``vitalstats.report.terminal``)."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from vitalstats.doctor.train import RunResult
from vitalstats.report.story import count
from vitalstats.report.terminal import findings_text

__all__ = ["findings_text", "print_findings", "print_summary", "results_table"]


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
            str(count(result.findings)),
        )
    return table


def print_findings(console: Console, results: Sequence[RunResult]) -> None:
    """Each run's findings as a story: one entry per code, root causes first."""
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
