"""``vitalstats doctor``: train the seeds' models in contrasting configurations, monitored.

Every configuration becomes one run of one store, so the HTML report overlays them::

    from vitalstats.doctor import run_doctor
    results = run_doctor(families=("tanh",), epochs=1, out="report.html", store="doctor.sqlite")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vitalstats.doctor.data import Split, load_split
from vitalstats.doctor.models import CONFIGURATIONS, FAMILIES, Configuration, Family, configurations
from vitalstats.doctor.train import RunResult, train_configuration

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

__all__ = [
    "CONFIGURATIONS",
    "FAMILIES",
    "Configuration",
    "DoctorResult",
    "RunResult",
    "Split",
    "configurations",
    "load_split",
    "run_doctor",
    "train_configuration",
]


@dataclass(frozen=True)
class DoctorResult:
    """The runs the doctor trained, the store they went to and the report it wrote."""

    runs: tuple[RunResult, ...]
    store: Path
    report: Path | None


def run_doctor(
    families: Sequence[Family] = FAMILIES,
    *,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    store: str | Path = "runs/doctor.sqlite",
    out: str | Path | None = "vitalstats-report.html",
    console: Console | None = None,
) -> DoctorResult:
    """Train every configuration of ``families`` into ``store``, then write the report ``out``.

    ``store``'s directory is created if missing. Runs already in ``store`` are kept, never
    overwritten: new runs with the same names get a suffix (the store keeps names unique). Progress goes to ``console`` (a rich Console; quiet
    when None) with one bar per run.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vitalstats.store import RunStore

    console = console or Console(quiet=True)

    store = Path(store)
    store.parent.mkdir(parents=True, exist_ok=True)
    chosen = configurations(tuple(families))
    splits: dict[str, Split] = {}
    results: list[RunResult] = []
    columns = (
        TextColumn("[bold]{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
    )
    with RunStore(store) as run_store, Progress(*columns, console=console) as progress:
        for config in chosen:
            if config.dataset not in splits:
                splits[config.dataset] = load_split(config.dataset, seed=seed)
            task = progress.add_task(config.name, total=None, loss="")

            def report_progress(done: int, total: int, epoch_loss: float | None, task=task) -> None:
                loss = "" if epoch_loss is None else f"loss {epoch_loss:.4f}"
                progress.update(task, completed=done, total=total, loss=loss)

            results.append(
                train_configuration(
                    config,
                    splits[config.dataset],
                    store=run_store,
                    epochs=epochs,
                    seed=seed,
                    device=device,
                    progress=report_progress,
                )
            )
    report = None
    if out is not None:
        from vitalstats.report import write_report

        report = write_report(store, out, run=[result.name for result in results])
    return DoctorResult(tuple(results), store, report)
