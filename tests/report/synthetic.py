"""Synthetic runs written through the public RunStore API, shaped like the monitor's output.

The values are known closed-form curves, so tests can check what the report and the export
read back against the numbers written here (the oracle), not against report code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitalstats.store import LayerInfo, RunStore

HOSTILE_NAME = "<script>alert(1)</script>"

LAYERS = (
    LayerInfo("net.0", "Linear", 1, 40),
    LayerInfo("net.1", "BatchNorm1d", 1, 16),
    LayerInfo("net.2", "Tanh", 1, 0),
    LayerInfo(HOSTILE_NAME, "Tanh", 1, 0),
    LayerInfo("net.4", "Linear", 1, 9),
)
PARAMETERS = ("net.0.weight", "net.0.bias", "net.1.weight", "net.4.weight")
HISTOGRAM_EDGES = np.linspace(-1.0, 1.0, 33)
GRADIENT_EDGES = np.linspace(-12.0, 2.0, 65)  # log10 |g|, as the monitor bins it
HISTOGRAM_EVERY = 10
NONFINITE_STEP = 20  # net.2 reports NaN/Inf outputs at this step


def gradient_bin(index: int, step: int) -> int:
    """The bin every sampled gradient of PARAMETERS[index] falls in at ``step`` (drifting down)."""
    return max(0, 50 - 4 * index - step // HISTOGRAM_EVERY)


def loss_at(step: np.ndarray | int, scale: float) -> np.ndarray:
    return scale * np.exp(-np.asarray(step, float) / 40.0) + 0.05


def write_run(
    store: RunStore,
    name: str,
    steps: int = 60,
    scale: float = 2.0,
    end: bool = True,
    findings: bool = True,
) -> int:
    """One run: every contract metric at every step, activation and gradient histograms every
    10 steps."""
    run_id = store.start_run(
        name=name, config={"lr": 1e-3, "model": {"layers": 5}, "note": HOSTILE_NAME}
    )
    store.add_layers(run_id, LAYERS)
    for step in range(steps):
        loss = float(loss_at(step, scale))
        rows = [("", "loss", loss), ("", "loss_ewm_mean", loss * 1.01), ("", "loss_ewm_std", 0.1 * loss),
                ("", "lr", 1e-3), ("", "steps_per_second", 100.0 + step), ("", "grad_norm_total", 1.0 + step)]  # fmt: skip
        for depth, layer in enumerate(LAYERS):
            rows += [(layer.name, "act_mean", 0.01 * depth), (layer.name, "act_std", 0.5 ** depth),
                     (layer.name, "act_saturated_fraction", 0.1 * depth), (layer.name, "act_min", -1.0),
                     (layer.name, "act_max", 1.0)]  # fmt: skip
        for index, parameter in enumerate(PARAMETERS):
            rows += [(parameter, "grad_norm", (index + 1) * 0.1 / (step + 1)),
                     (parameter, "update_to_data_log10", -3.0 - 0.1 * index),
                     (parameter, "adam_m_hat_abs_mean", 1e-3 * (index + 1)),
                     (parameter, "adam_sqrt_v_hat_mean", 1e-2 * (index + 1)),
                     (parameter, "adam_step_rms", 0.5)]  # fmt: skip
        rows += [
            ("net.1", "bn_mean_drift", 0.2 / (step + 1)),
            ("net.1", "bn_var_log_ratio", 0.01 * step),
        ]
        store.add_scalars(run_id, step, rows)
        if step == NONFINITE_STEP:
            store.add_scalars(run_id, step, [("net.2", "act_nonfinite_fraction", 0.25)])
        if step % HISTOGRAM_EVERY == 0:
            for depth, layer in enumerate(LAYERS):
                counts = np.histogram(
                    np.tanh(np.linspace(-3, 3, 1000) * 0.5**depth), HISTOGRAM_EDGES
                )[0]
                store.add_histogram(run_id, step, layer.name, "act_hist", HISTOGRAM_EDGES, counts)
            for index, parameter in enumerate(PARAMETERS):
                counts = np.zeros(len(GRADIENT_EDGES) - 1, dtype=np.int64)
                counts[gradient_bin(index, step)] = 500
                store.add_histogram(run_id, step, parameter, "grad_hist", GRADIENT_EDGES, counts)
    store.add_scalars(
        run_id, steps - 1, [("", "eval_loss", float(loss_at(steps - 1, scale)) * 1.2)]
    )
    if findings:
        store.add_findings(
            run_id,
            [
                {"code": "ACT_SATURATED", "severity": "warning", "layer": HOSTILE_NAME,
                 "step": 10, "message": f"{HOSTILE_NAME} is saturated", "fix": "use a <b>gain</b>"},
                {"code": "GRAD_EXPLODING", "severity": "error", "layer": "net.0.weight",
                 "step": 20, "message": "gradient norm 1e4", "fix": "clip gradients"},
                {"code": "LR_TOO_HIGH", "severity": "error", "layer": "", "step": 15,
                 "message": "updates of 1e-1 of the weights", "fix": "lower the lr"},
                {"code": "BIAS_BEFORE_NORM", "severity": "info", "layer": "net.0", "step": None,
                 "message": "net.0's bias feeds net.1", "fix": "bias=False"},
            ],
        )  # fmt: skip
    store.flush()
    if end:
        store.end_run(run_id)
    return run_id


def make_store(path: Path, runs: int = 2, steps: int = 60) -> Path:
    with RunStore(path) as store:
        for index in range(runs):
            write_run(store, f"run-{index}", steps=steps, scale=2.0 + index)
    return path
