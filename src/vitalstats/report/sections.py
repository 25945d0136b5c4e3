"""The report's sections, in reading order; each turns runs into one :class:`Section`.

A section with nothing recorded says so and what to switch on, instead of disappearing.
The runs table comes first, then the findings (what a reader acts on), then the figures.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Sequence

import numpy as np

from vitalstats.report import plots
from vitalstats.report.collect import ACTIVATION_TYPES, RUN_LEVEL, RunData, SeriesKind
from vitalstats.report.html import Raw, Section, badge, esc, figure, grid, note, table

_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
MAX_LINES_PER_FIGURE = 24  # beyond this a per-layer plot is unreadable; the caption says so


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _steps(run: RunData) -> str:
    steps, _ = run.series(RUN_LEVEL, "loss")
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
                     len(run.findings)))  # fmt: skip
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


def findings_section(runs: Sequence[RunData]) -> Section:
    """Every finding of every run, most severe first, each with its fix."""
    rows = []
    for run in runs:
        for finding in run.findings:
            severity = str(finding.get("severity") or "")
            rows.append(
                (_SEVERITY_ORDER.get(severity, 3), finding.get("step") or 0, run.name, finding)
            )
    rows.sort(key=lambda row: (row[0], row[1]))
    if not rows:
        return Section("findings", "Findings", note("No findings: nothing looked unhealthy."))
    body = table(
        ("severity", "run", "code", "layer", "step", "what and how to fix"),
        [
            (
                Raw(badge(str(f.get("severity")))),
                run_name,
                Raw(f"<code>{esc(f.get('code'))}</code>"),
                f.get("layer") or "",
                "" if f.get("step") is None else f.get("step"),
                Raw(
                    f"{esc(f.get('message'))}<br><span class='fix'>fix: {esc(f.get('fix'))}</span>"
                ),
            )
            for _, _, run_name, f in rows
        ],
        css_class="findings",
    )
    return Section("findings", f"Findings ({len(rows)})", body)


def _line(run: RunData, layer: str, metric: str, label: str) -> plots.Line:
    steps, values = run.series(layer, metric)
    return plots.Line(label, steps.astype(float), values)


def loss_section(runs: Sequence[RunData]) -> Section:
    """The loss per run with its exponentially weighted mean and a +-2 EWM std band."""
    curves = [
        plots.LossCurve(
            run.name,
            _line(run, RUN_LEVEL, "loss", "loss"),
            _line(run, RUN_LEVEL, "loss_ewm_mean", "EWM mean"),
            _line(run, RUN_LEVEL, "loss_ewm_std", "EWM std"),
            _line(run, RUN_LEVEL, "eval_loss", "eval loss"),
        )
        for run in runs
        if "loss" in run.metrics
    ]
    if not curves:
        return Section("loss", "Loss", note("No loss recorded: pass it with mon.step(loss=loss)."))
    caption = "Loss per optimiser step; line: EWM mean; band: EWM mean ± 2 EWM std (a spike leaves the band)."
    return Section("loss", "Loss", figure(plots.loss_figure(curves), caption))


def _activation_layers(run: RunData, metric: str, kind: SeriesKind = "scalar") -> list[str]:
    """Layers carrying ``metric``; only activation-function outputs when there are any."""
    layers = run.layers_with(metric, kind)
    activations = [name for name in layers if run.layer_type(name) in ACTIVATION_TYPES]
    return activations or layers


def _nearest(available: Sequence[int], wanted: int) -> int:
    return min(available, key=lambda step: (abs(step - wanted), step))


def histogram_steps(available: Sequence[int], requested: Sequence[int] | None) -> list[int]:
    """The steps to draw: the requested ones (nearest recorded), else the first and the last."""
    if not available:
        return []
    available = sorted(available)
    if requested:
        return list(dict.fromkeys(_nearest(available, step) for step in requested))
    return list(dict.fromkeys([available[0], available[-1]]))


def histograms_section(runs: Sequence[RunData], requested_steps: Sequence[int] | None) -> Section:
    """Per-layer activation histograms at chosen steps (the makemore figure), per run."""
    body = ""
    for run in runs:
        layers = _activation_layers(run, "act_hist", "histogram")[:MAX_LINES_PER_FIGURE]
        by_layer = {layer: {step: (e, c) for step, e, c in run.histograms(layer, "act_hist")}
                    for layer in layers}  # fmt: skip
        available = sorted({step for per_step in by_layer.values() for step in per_step})
        for step in histogram_steps(available, requested_steps):
            histograms = []
            for position, layer in enumerate(layers):
                if not by_layer[layer]:
                    continue
                nearest = _nearest(list(by_layer[layer]), step)
                edges, counts = by_layer[layer][nearest]
                label = f"{position}: {layer} ({run.layer_type(layer) or '?'})" + _summary(
                    run, layer, nearest
                )
                histograms.append(plots.Histogram(label, edges, counts))
            title = f"{run.name}: activations at step {step}"
            body += figure(plots.histograms_figure(histograms, title), title)
    body = grid(body) or note("No activation histograms recorded: enable the Monitor's histograms.")
    return Section("activation-histograms", "Activation histograms", body)


def _value_at(run: RunData, layer: str, metric: str, step: int) -> float | None:
    steps, values = run.series(layer, metric)
    if len(steps) == 0:
        return None
    return float(values[np.argmin(np.abs(steps - step))])


def _summary(run: RunData, layer: str, step: int) -> str:
    parts = []
    for metric, label, fmt in (("act_mean", "mean", "{:+.2f}"), ("act_std", "std", "{:.2f}"),
                               ("act_saturated_fraction", "saturated", "{:.1%}")):  # fmt: skip
        value = _value_at(run, layer, metric, step)
        if value is not None and np.isfinite(value):
            parts.append(f"{label} {fmt.format(value)}")
    return (": " + ", ".join(parts)) if parts else ""


def depth_section(runs: Sequence[RunData]) -> Section:
    """Activation std and saturated fraction against layer position, runs overlaid."""
    std_by_run: dict[str, plots.Line] = {}
    saturation_by_run: dict[str, plots.Line] = {}
    names_by_run: dict[str, list[str]] = {}
    for run in runs:
        layers = _activation_layers(run, "act_std")
        if not layers:
            continue
        names_by_run[run.name] = layers
        for metric, target in (
            ("act_std", std_by_run),
            ("act_saturated_fraction", saturation_by_run),
        ):
            values = [run.series(layer, metric)[1] for layer in layers]
            if all(len(v) for v in values):
                last = np.array([v[-1] for v in values])
                target[run.name] = plots.Line(run.name, np.arange(len(layers), dtype=float), last)
    if not std_by_run:
        return Section("activations-by-depth", "Activations by depth",
                       note("No activation statistics recorded (act_std)."))  # fmt: skip
    layer_lists = list(names_by_run.values())
    same = all(names == layer_lists[0] for names in layer_lists)
    longest = max(layer_lists, key=len)
    ticks = longest if same else [str(i) for i in range(len(longest))]
    caption = (
        "Last recorded step. A std that shrinks or grows with depth means the init gain is wrong."
    )
    body = figure(plots.by_depth_figure(std_by_run, saturation_by_run, ticks), caption)
    if not same:
        body += table(("run", "layers by position"),
                      [(run, ", ".join(f"{i}: {n}" for i, n in enumerate(names)))
                       for run, names in names_by_run.items()])  # fmt: skip
    return Section("activations-by-depth", "Activations by depth", body)


def _per_layer_figures(
    runs: Sequence[RunData], metric: str, ylabel: str, log_y: bool, guide: float | None = None,
    guide_label: str = "",
) -> str:  # fmt: skip
    body = ""
    for run in runs:
        layers = run.layers_with(metric)
        if not layers:
            continue
        lines = [
            dataclasses.replace(_line(run, layer, metric, layer), dashed=layer.endswith(".bias"))
            for layer in layers[:MAX_LINES_PER_FIGURE]
        ]
        title = f"{run.name}: {metric}"
        uri = plots.lines_figure(
            lines, title, ylabel, log_y=log_y, guide=guide, guide_label=guide_label
        )
        caption = title + (f" (first {MAX_LINES_PER_FIGURE} of {len(layers)} layers)"
                           if len(layers) > MAX_LINES_PER_FIGURE else "")  # fmt: skip
        body += figure(uri, caption)
    return grid(body)


def gradient_section(runs: Sequence[RunData]) -> Section:
    body = _per_layer_figures(runs, "grad_norm", "gradient L2 norm", log_y=True)
    return Section("gradient-norms", "Gradient norm by layer",
                   body or note("No per-parameter gradient norms recorded (grad_norm)."))  # fmt: skip


def update_section(runs: Sequence[RunData]) -> Section:
    body = _per_layer_figures(
        runs, "update_to_data_log10", "log10(std(update) / std(weight))", log_y=False,
        guide=plots.UPDATE_TO_DATA_GUIDE_LOG10, guide_label="1e-3 guide",
    )  # fmt: skip
    if body:
        body = note("Around -3 (dashed) is healthy; far below, the layer barely learns; far above, "
                    "the step is too large for the weights.") + body  # fmt: skip
    return Section("update-to-data", "Update:data ratio",
                   body or note("No update:data ratios recorded (needs the optimizer)."))  # fmt: skip


def batchnorm_section(runs: Sequence[RunData]) -> Section:
    body = _per_layer_figures(
        runs, "bn_mean_drift", "|batch − running mean| / running std", log_y=False
    )
    body += _per_layer_figures(runs, "bn_var_log_ratio", "log(batch var / running var)", log_y=False,
                               guide=0.0)  # fmt: skip
    return Section("batchnorm-drift", "BatchNorm: batch vs running statistics",
                   body or note("No BatchNorm layers in these runs."))  # fmt: skip


def adam_section(runs: Sequence[RunData]) -> Section:
    body = ""
    for metric, ylabel in (("adam_m_hat_abs_mean", "mean |m̂| (bias-corrected 1st moment)"),
                           ("adam_sqrt_v_hat_mean", "mean sqrt(v̂) (bias-corrected 2nd moment)"),
                           ("adam_step_rms", "RMS of the Adam step lr·m̂ / (sqrt(v̂) + eps)")):  # fmt: skip
        body += _per_layer_figures(runs, metric, ylabel, log_y=True)
    return Section("adam-moments", "Adam moments",
                   body or note("No Adam-family optimiser moments recorded."))  # fmt: skip


def comparison_section(runs: Sequence[RunData]) -> Section:
    """Run-level series of every run on shared axes."""
    body = ""
    for metric, ylabel, log_y in (("loss_ewm_mean", "loss (EWM mean)", True), ("eval_loss", "eval loss", True),
                                  ("grad_norm_total", "total gradient norm", True), ("lr", "learning rate", False),
                                  ("steps_per_second", "steps per second", False)):  # fmt: skip
        lines = [_line(run, RUN_LEVEL, metric, run.name) for run in runs if metric in run.metrics]
        lines = [line for line in lines if len(line.x)]
        if lines:
            uri = plots.lines_figure(
                lines, f"all runs: {metric}", ylabel, log_y=log_y, by_order_colors=False
            )
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
        histograms_section(runs, histogram_steps),
        depth_section(runs),
        gradient_section(runs),
        update_section(runs),
        batchnorm_section(runs),
        adam_section(runs),
        comparison_section(runs),
    ]
