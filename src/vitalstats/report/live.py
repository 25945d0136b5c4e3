"""A live view of one run in a store (``vitalstats watch``): what is read each refresh and how
one frame looks in a terminal (rich).

    watcher = RunWatcher(vs.RunStore("runs/exp1.sqlite", readonly=True), run=None)
    console.print(frame(watcher.read()))

Each refresh reads only what changed where it can: the loss from the last step seen on, the
latest value of every per-layer series (one index seek each), the findings and the run row.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from vitalstats.report.collect import (
    ACT_DEAD,
    ACT_NONFINITE,
    ACT_SATURATED,
    ACT_STD,
    GRAD_NORM,
    GRAD_NORM_TOTAL,
    LOSS,
    LR,
    RUN_LEVEL,
    STEPS_PER_SECOND,
    UPDATE_TO_DATA,
)
from vitalstats.report.heatmaps import evenly_spaced
from vitalstats.report.story import told
from vitalstats.report.terminal import findings_text

LAYER_METRICS = (ACT_STD, ACT_DEAD, ACT_SATURATED, ACT_NONFINITE, GRAD_NORM, UPDATE_TO_DATA)
RUN_METRICS = (STEPS_PER_SECOND, LR, GRAD_NORM_TOTAL)
STALE_AFTER_S = 120.0  # a "running" run with no commit for this long may have died
# Defaults of vs.monitor.Thresholds, used when a run's config does not carry its own.
DEFAULT_THRESHOLDS = {"saturated_fraction": 0.2, "dead_fraction": 0.25,
                      "update_to_data_log10_low": -5.0, "update_to_data_log10_high": -1.0}  # fmt: skip


def pick_run(store: Any, run: int | str | None) -> Any:
    """The run to watch: ``run`` if given, else the most recently written run still
    "running", else the newest run. StoreError (unknown run) or ValueError (no runs)."""
    if run is not None:
        return store.run(run)
    runs = store.runs()
    if not runs:
        raise ValueError(
            f"{store.path} has no runs yet; start one with vs.Monitor(model, store=...)"
        )
    running = [info for info in runs if info.status == "running"]
    return max(running, key=lambda info: info.updated_at) if running else runs[-1]


@dataclass
class LayerRow:
    name: str
    type: str
    values: dict[str, float] = field(default_factory=dict)  # metric -> latest value


@dataclass
class Snapshot:
    """What one frame shows."""

    info: Any  # RunInfo
    loss_steps: np.ndarray
    loss_values: np.ndarray
    run_values: dict[str, float]
    layers: list[LayerRow]
    findings: list[Any]  # told: roots with consequences
    thresholds: dict[str, float]
    read_at: float

    @property
    def step(self) -> int | None:
        return int(self.loss_steps[-1]) if len(self.loss_steps) else None


class RunWatcher:
    """Follows one run; ``read()`` returns a fresh :class:`Snapshot`."""

    def __init__(self, store: Any, run: int | str | None = None) -> None:
        self.store = store
        self.run_id = pick_run(store, run).run_id
        self._steps = np.array([], dtype=np.int64)
        self._values = np.array([], dtype=np.float64)

    def _read_loss(self) -> None:
        start = None if not len(self._steps) else int(self._steps[-1]) + 1
        steps, values = self.store.series(self.run_id, RUN_LEVEL, LOSS, start=start)
        if len(steps):
            self._steps = np.concatenate([self._steps, steps])
            self._values = np.concatenate([self._values, values])

    def read(self) -> Snapshot:
        info = self.store.run(self.run_id)
        self._read_loss()
        latest = self.store.latest(self.run_id, (*LAYER_METRICS, *RUN_METRICS))
        run_values = {m: v for (layer, m), (_, v) in latest.items() if layer == RUN_LEVEL}
        configured = (info.config.get("monitor") or {}).get("thresholds") or {}
        thresholds = {
            **DEFAULT_THRESHOLDS,
            **{k: v for k, v in configured.items() if k in DEFAULT_THRESHOLDS},
        }
        return Snapshot(
            info=info, loss_steps=self._steps, loss_values=self._values, run_values=run_values,
            layers=_layer_rows(self.store.layers(self.run_id), latest),
            findings=told(self.store.findings(self.run_id)), thresholds=thresholds,
            read_at=time.time(),
        )  # fmt: skip


def _layer_rows(
    layers: list[Any], latest: dict[tuple[str, str], tuple[int, float]]
) -> list[LayerRow]:
    """One row per watched module; a module's parameters (``fc.weight``, ``fc.bias``) give its
    gradient norm (L2 over them) and update:data (the weight's, else the first one's)."""
    rows = {layer.name: LayerRow(layer.name, layer.type) for layer in layers}
    grad_squares: dict[str, float] = {}
    for (name, metric), (_, value) in sorted(latest.items()):
        if name == RUN_LEVEL:
            continue
        if name in rows and metric not in (GRAD_NORM, UPDATE_TO_DATA):
            rows[name].values[metric] = value
            continue
        owner, _, leaf = name.rpartition(".")
        if owner not in rows:
            continue
        if metric == GRAD_NORM:
            grad_squares[owner] = grad_squares.get(owner, 0.0) + value * value
        elif metric == UPDATE_TO_DATA and (
            leaf == "weight" or UPDATE_TO_DATA not in rows[owner].values
        ):
            rows[owner].values[UPDATE_TO_DATA] = value
    for owner, square in grad_squares.items():
        rows[owner].values[GRAD_NORM] = math.sqrt(square)
    return [row for row in rows.values() if row.values]


# ---- one frame --------------------------------------------------------------------------------
def loss_trend(steps: np.ndarray, values: np.ndarray, window: int = 50) -> str:
    """Median of the last ``window`` finite losses against the ``window`` before them."""
    finite = np.isfinite(values)
    steps, values = steps[finite], values[finite]
    window = min(window, len(values) // 2)
    if window < 2:
        return ""
    recent, before = np.median(values[-window:]), np.median(values[-2 * window : -window])
    if before == 0:
        return ""
    change = recent / before - 1
    arrow = "↓" if change < -0.005 else "↑" if change > 0.005 else "→"
    return f"{arrow} {abs(change):.1%} (median of the last {window} recorded steps vs the {window} before)"


def _number(value: float | None, fmt: str = "{:.4g}") -> str:
    if value is None:
        return "—"
    return fmt.format(value) if math.isfinite(value) else str(value)


def _steps_per_second(snapshot: Snapshot) -> float | None:
    recorded = snapshot.run_values.get(STEPS_PER_SECOND)
    if recorded is not None and math.isfinite(recorded):
        return recorded
    info, steps = snapshot.info, snapshot.loss_steps
    elapsed = (info.updated_at or 0) - info.started_at
    return (steps[-1] - steps[0]) / elapsed if len(steps) > 1 and elapsed > 0 else None


def header(snapshot: Snapshot) -> Text:
    info = snapshot.info
    text = Text()
    text.append(f"{info.name}", style="bold")
    text.append(f"  (run {info.run_id})  ")
    status_style = {"running": "green", "finished": "cyan"}.get(info.status, "red")
    text.append(info.status, style=status_style)
    age = snapshot.read_at - (info.updated_at or info.started_at)
    text.append(f"  · last write {_age(age)} ago")
    if info.status == "running" and age > STALE_AFTER_S:
        text.append("  (no write for a while: the training process may have died)", style="red")
    step = snapshot.step
    losses = snapshot.loss_values
    text.append("\nstep ")
    text.append("—" if step is None else str(step), style="bold")
    text.append("  · loss ")
    text.append(_number(float(losses[-1]) if len(losses) else None), style="bold")
    trend = loss_trend(snapshot.loss_steps, losses)
    if trend:
        text.append(f" {trend}", style="green" if trend.startswith("↓") else "yellow")
    rate = _steps_per_second(snapshot)
    text.append(
        f"\nsteps/s {_number(rate, '{:,.0f}' if rate is not None and rate >= 100 else '{:.3g}')}"
    )
    text.append(f"  · lr {_number(snapshot.run_values.get(LR), '{:.3g}')}")
    text.append(
        f"  · total grad norm {_number(snapshot.run_values.get(GRAD_NORM_TOTAL), '{:.3g}')}"
    )
    return text


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def layer_table(snapshot: Snapshot, max_layers: int = 20) -> Table:
    """Activation std, dead and saturated share, gradient norm and update:data per layer;
    layers named in a finding first, then evenly spaced ones, shown in forward order."""
    rows = snapshot.layers
    flagged = {
        layer for f in snapshot.findings for g in (f, *f.consequences) for layer in g.all_layers
    }
    named = [row.name for row in rows]
    chosen = set([name for name in named if name in flagged][:max_layers])
    rest = [name for name in named if name not in chosen]
    chosen |= set(evenly_spaced(rest, max(0, max_layers - len(chosen))))
    shown = [row for row in rows if row.name in chosen]
    title = (
        "layers"
        if len(shown) == len(rows)
        else f"{len(shown)} of {len(rows)} layers (--layers N shows more)"
    )
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column, justify in (("layer", "left"), ("type", "left"), ("act std", "right"),
                            ("dead", "right"), ("saturated", "right"), ("grad norm", "right"),
                            ("update:data", "right")):  # fmt: skip
        table.add_column(column, justify=justify, no_wrap=column != "layer", overflow="fold")
    limits = snapshot.thresholds
    for row in shown:
        v = row.values
        table.add_row(
            Text(row.name, style="bold" if row.name in flagged else ""),
            row.type,
            _cell(v.get(ACT_STD), "{:.3g}", bad=_nonfinite(v.get(ACT_STD)) or (v.get(ACT_NONFINITE) or 0) > 0),
            _cell(v.get(ACT_DEAD), "{:.0%}", warn=(v.get(ACT_DEAD) or 0) > limits["dead_fraction"]),
            _cell(v.get(ACT_SATURATED), "{:.0%}", warn=(v.get(ACT_SATURATED) or 0) > limits["saturated_fraction"]),
            _cell(v.get(GRAD_NORM), "{:.3g}", bad=_nonfinite(v.get(GRAD_NORM))),
            _cell(_ratio(v.get(UPDATE_TO_DATA)), "{:.1e}",
                  warn=_outside(v.get(UPDATE_TO_DATA), limits["update_to_data_log10_low"], limits["update_to_data_log10_high"])),
        )  # fmt: skip
    return table


def _ratio(log10_value: float | None) -> float | None:
    return (
        None
        if log10_value is None
        else 10.0**log10_value
        if math.isfinite(log10_value)
        else log10_value
    )


def _nonfinite(value: float | None) -> bool:
    return value is not None and not math.isfinite(value)


def _outside(value: float | None, low: float, high: float) -> bool:
    return value is not None and math.isfinite(value) and not low <= value <= high


def _cell(value: float | None, fmt: str, warn: bool = False, bad: bool = False) -> Text:
    style = "bold red" if bad else "yellow" if warn else ""
    return Text(_number(value, fmt), style=style)


def frame(snapshot: Snapshot, max_layers: int = 20, max_findings: int = 6) -> Group:
    """Header (step, loss and trend, steps/s), findings root cause first, the layer table."""
    parts: list[Any] = [header(snapshot), Text("")]
    if snapshot.findings:
        parts += [Text("findings so far (root cause first)", style="bold"),
                  findings_text(snapshot.findings, details=True, limit=max_findings)]  # fmt: skip
    else:
        parts.append(Text("no findings so far", style="green"))
    if snapshot.layers:
        parts.append(layer_table(snapshot, max_layers))
    return Group(*parts)
