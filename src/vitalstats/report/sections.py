"""The report's sections, in reading order; each turns runs into one :class:`Section`.

A section with nothing recorded says so and what to switch on, instead of disappearing.
The runs table comes first, then the findings (what a reader acts on), then the figures:
run-level here, histograms in ``histogram_sections``, per-layer ones in ``layer_sections``.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence

from vitalstats.report import plots
from vitalstats.report.collect import (
    EVAL_LOSS,
    LOSS,
    LOSS_EWM_MEAN,
    LOSS_EWM_STD,
    RUN_LEVEL,
    RUN_LEVEL_SERIES,
    RunData,
)
from vitalstats.report.histogram_sections import (
    activation_heatmaps_body,
    empty,
    gradient_heatmaps_body,
    histograms_section_body,
)
from vitalstats.report.html import Raw, Section, badge, esc, figure, grid, note, table
from vitalstats.report.layer_sections import (
    adam_section,
    batchnorm_section,
    depth_section,
    gradient_section,
    update_section,
)
from vitalstats.report.story import count, told, where


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _steps(run: RunData) -> str:
    steps, _ = run.series(RUN_LEVEL, LOSS)
    return "—" if len(steps) == 0 else f"{steps[0]}…{steps[-1]} ({len(steps)} recorded)"


def _description(config: dict) -> str:
    """``description`` from the run's config (or the user part the Monitor nests), if any."""
    user = config.get("user") if isinstance(config.get("user"), dict) else {}
    return str(config.get("description") or user.get("description") or "")


def metadata_section(runs: Sequence[RunData]) -> Section:
    """Each run: status, times, steps recorded, and its configuration and environment."""
    rows = []
    for run in runs:
        info = run.info
        status = info.status + (" (still being written)" if info.status == "running" else "")
        rows.append((info.run_id, info.name, _description(info.config), status,
                     _time(info.started_at), _time(info.ended_at), _steps(run), len(run.layers),
                     count(run.findings)))  # fmt: skip
    headers = ("id", "run", "description", "status", "started", "ended", "steps", "layers watched",
               "findings")  # fmt: skip
    if not any(row[2] for row in rows):  # no run has a description: drop the column
        headers = headers[:2] + headers[3:]
        rows = [row[:2] + row[3:] for row in rows]
    body = table(headers, rows)
    for run in runs:
        details = {**run.info.config, "environment": getattr(run.info, "environment", {})}
        text = json.dumps(details, indent=2, sort_keys=True, default=str)
        body += (
            f"<details><summary>{esc(run.name)}: configuration and environment</summary>"
            f"<pre>{esc(text)}</pre></details>"
        )
    return Section("run-metadata", "Runs", body)


def _finding_cells(finding, run_name: str, consequence: bool) -> tuple:
    layers = where(finding, max_layers=8)
    text = f"{esc(finding.message)}<br><span class='fix'>fix: {esc(finding.fix)}</span>"
    code = f"<code>{esc(finding.code)}</code>"
    if consequence:
        code = f"<span class='explains'>↳ explained by the root above:</span> {code}"
    return (Raw(badge(str(finding.severity))), run_name, Raw(code), layers,
            "" if finding.step is None else finding.step, Raw(text))  # fmt: skip


def findings_section(runs: Sequence[RunData]) -> Section:
    """Each run's findings as a story (``vitalstats.monitor.causes``): root causes first, the
    findings each explains indented under it; one row per code with every layer it was seen on."""
    rows, total = [], 0
    for run in runs:
        for root in told(run.findings):
            rows.append(("root", _finding_cells(root, run.name, consequence=False)))
            for consequence in root.consequences:
                rows.append(
                    ("consequence", _finding_cells(consequence, run.name, consequence=True))
                )
            total += 1 + len(root.consequences)
    if not rows:
        return Section("findings", "Findings", note("No findings: nothing looked unhealthy."))
    headers = ("severity", "run", "code", "layers", "first step", "what and how to fix")
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body_rows = "".join(
        f"<tr class='{kind}'>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>"
        for kind, cells in rows
    )
    body = (
        note(
            "Root causes first; a finding a root cause explains is indented under it. One row per "
            "code, listing every layer it was seen on."
        )
        + f"<table class='findings'><thead><tr>{head}</tr></thead><tbody>{body_rows}</tbody></table>"
    )
    return Section("findings", f"Findings ({total})", body)


def _cell(cell: object) -> str:
    return cell.html if isinstance(cell, Raw) else esc(cell)


def loss_section(runs: Sequence[RunData]) -> Section:
    """The loss per run with a rolling median and a rolling 10-90% quantile band."""

    def line(run: RunData, metric: str) -> plots.Line:
        steps, values = run.series(RUN_LEVEL, metric)
        return plots.Line(metric, steps.astype(float), values)

    curves = [
        plots.LossCurve(run.name, line(run, LOSS), line(run, LOSS_EWM_MEAN), line(run, EVAL_LOSS))
        for run in runs
        if LOSS in run.metrics
    ]
    if not curves:
        return Section("loss", "Loss", note("No loss recorded: pass it with mon.step(loss=loss)."))
    caption = ("Loss per optimiser step (faint); line: rolling median; band: rolling 10th–90th "
               "percentile (4% of the run per window); dashed: the monitor's EWM mean.")  # fmt: skip
    return Section("loss", "Loss", figure(plots.loss_figure(curves), caption))


def histograms_section(runs: Sequence[RunData], requested_steps: Sequence[int] | None) -> Section:
    body = histograms_section_body(runs, requested_steps)
    return Section("activation-histograms", "Activation and gradient histograms at chosen steps",
                   body or empty("activation or gradient histograms"))  # fmt: skip


def activation_heatmaps_section(runs: Sequence[RunData]) -> Section:
    return Section("activation-heatmaps", "Activation histograms over time",
                   activation_heatmaps_body(runs) or empty("activation histograms"))  # fmt: skip


def gradient_heatmaps_section(runs: Sequence[RunData]) -> Section:
    return Section("gradient-heatmaps", "Gradient histograms over time",
                   gradient_heatmaps_body(runs) or empty("gradient histograms"))  # fmt: skip


_NOT_COMPARED = {LOSS, LOSS_EWM_STD}  # drawn in "Loss" / not worth a shared axis


def comparison_section(runs: Sequence[RunData]) -> Section:
    """Run-level series of every run on shared axes; run-level metrics this version does not
    know (a newer monitor's) are drawn too, under their own names."""
    known = {metric for metric, _, _ in RUN_LEVEL_SERIES}
    recorded = sorted({m for run in runs for m in run.store.metrics(run.info.run_id, RUN_LEVEL)})
    extra = [(m, m, False) for m in recorded if m not in known and m not in _NOT_COMPARED]
    body = ""
    for metric, ylabel, log_y in (*RUN_LEVEL_SERIES, *extra):
        lines = []
        for run in runs:
            steps, values = run.series(RUN_LEVEL, metric)
            if len(steps):
                lines.append(plots.Line(run.name, steps.astype(float), values))
        if lines:
            uri = plots.lines_figure(lines, f"all runs: {metric}", ylabel, log_y=log_y,
                                     by_order_colors=False)  # fmt: skip
            body += figure(uri, f"{metric} of every run")
    body = grid(body)
    return Section("comparison", "Runs compared", body or note("No run-level series recorded."))


def all_sections(
    runs: Sequence[RunData], histogram_steps: Sequence[int] | None = None
) -> list[Section]:
    return [
        metadata_section(runs),
        findings_section(runs),
        loss_section(runs),
        activation_heatmaps_section(runs),
        gradient_heatmaps_section(runs),
        histograms_section(runs, histogram_steps),
        depth_section(runs),
        gradient_section(runs),
        update_section(runs),
        batchnorm_section(runs),
        adam_section(runs),
        comparison_section(runs),
    ]
