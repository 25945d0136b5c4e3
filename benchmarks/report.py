"""How long the HTML report takes and how large it gets on big runs.

    python benchmarks/report.py [--case mlp81|gpt2|all] [--repeats 2]

Each case records two steps of a real model with ``vs.Monitor`` (every probe on) to learn
which (layer, metric) series and histograms the monitor writes for it, then writes a long run
of exactly those series straight into a store with ``RunStore`` (smooth random walks, drifting
Gaussian histograms; training thousands of steps on the CPU would take hours):

- ``mlp81``: 40 x (Linear 64 -> 64, Tanh) + Linear, 81 watched layers and 82 parameter
  tensors, 2,000 steps, every statistic and histogram every 5 steps (the doctor's schedule);
- ``gpt2``: GPT-2 small's 148 parameter tensors and 125 layers (transformers' GPT2LMHeadModel
  layout, built small: the names and count are GPT-2 small's), 10,000 steps on the Monitor's
  default schedule (grad norms every 10 steps, other statistics every 50, histograms every
  250).

Baseline: reading every series and histogram of the run from the store once (what any report
must at least do), timed in the same process. Prints a table (render seconds, ratio to the
baseline, MB against the 15 MB budget, figures) and writes benchmarks/results/report.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import vitalstats as vs
from vitalstats.monitor import MonitorConfig
from vitalstats.report import write_report

BUDGET_MB = 15.0
CASES = {
    "mlp81": {"steps": 2000, "grad_norm_every": 5, "stats_every": 5, "histograms_every": 5},
    "gpt2": {"steps": 10_000, "grad_norm_every": 10, "stats_every": 50, "histograms_every": 250},
}
EVERY_STEP = {"loss", "loss_ewm_mean", "loss_ewm_std", "lr", "steps_per_second", "grad_norm_total"}


def mlp81() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    layers: list[nn.Module] = []
    for _ in range(40):
        layers += [nn.Linear(64, 64), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(64, 10))
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    return model, x, y


def gpt2_small_layout() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=12, n_embd=32, n_head=2, n_positions=32, vocab_size=64,
                        bos_token_id=0, eos_token_id=0)  # fmt: skip
    return GPT2LMHeadModel(config)


def discover(
    case: str, directory: Path
) -> tuple[list, list[tuple[str, str]], list[tuple[str, str, np.ndarray]]]:
    """(layers, scalar series, histogram series with their edges) the Monitor writes."""
    path = directory / f"{case}-discover.sqlite"
    if case == "mlp81":
        model, x, y = mlp81()

        def loss_of() -> torch.Tensor:
            return nn.functional.cross_entropy(model(x), y)
    else:
        model = gpt2_small_layout()
        tokens = torch.randint(0, 64, (2, 16))

        def loss_of() -> torch.Tensor:
            return model(tokens, labels=tokens).loss

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with vs.Monitor(
        model, optimizer=optimizer, store=path, config=MonitorConfig.everything()
    ) as monitor:
        for _ in range(2):
            loss = loss_of()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            monitor.step(loss=loss)
    with vs.RunStore(path, readonly=True) as store:
        layers = store.layers(1)
        scalars = [
            (layer, metric)
            for metric in store.metrics(1)
            for layer in store.series_layers(1, metric)
        ]
        histograms = [
            (layer, metric, store.histograms(1, layer, metric)[0][1])
            for metric in store.metrics(1, kind="histogram")
            for layer in store.series_layers(1, metric, kind="histogram")
        ]
    return layers, scalars, histograms


def _schedule(metric: str, plan: dict) -> int:
    if metric in EVERY_STEP:
        return 1
    return plan["grad_norm_every"] if metric == "grad_norm" else plan["stats_every"]


def _walk(rng: np.random.Generator, metric: str, length: int) -> np.ndarray:
    """A smooth random walk in a plausible range for ``metric``."""
    drift = np.cumsum(rng.normal(0, 0.02, length))
    if metric == "act_nonfinite_fraction":
        return np.zeros(length)  # a healthy run: no NaN/Inf
    if metric.endswith("_fraction"):
        return np.clip(0.1 + 0.05 * np.sin(drift), 0, 1)
    if metric == "update_to_data_log10":
        return -3.0 + 0.3 * drift
    if metric in ("act_mean", "act_min"):
        return drift - (1.0 if metric == "act_min" else 0.0)
    if metric == "loss":
        return 3.0 * np.exp(-np.arange(length) / (length / 3)) + 0.3 * np.exp(
            rng.normal(0, 0.3, length)
        )
    return np.exp(rng.normal(-2, 1) + drift)


def _histogram_counts(rng: np.random.Generator, edges: np.ndarray, snapshots: int) -> np.ndarray:
    """(snapshots, bins) counts of 8192 Gaussian values whose scale drifts; ends take the tails."""
    centre = (edges[0] + edges[-1]) / 2 + rng.normal(0, 0.1 * (edges[-1] - edges[0]) / 4)
    scale = (edges[-1] - edges[0]) / 8 * np.exp(np.cumsum(rng.normal(0, 0.03, snapshots)))
    z = (edges[None, :] - centre) / scale[:, None]
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    cdf[:, 0], cdf[:, -1] = 0.0, 1.0
    return np.round(8192 * np.diff(cdf, axis=1)).astype(np.int64)


def synthesise(case: str, directory: Path, layers, scalars, histograms) -> tuple[Path, dict]:
    plan = CASES[case]
    steps = plan["steps"]
    rng = np.random.default_rng(0)
    path = directory / f"{case}.sqlite"
    started = time.perf_counter()
    with vs.RunStore(path, flush_interval=0) as store:
        run = store.start_run(case, config={"benchmark": case, **plan})
        store.add_layers(run, layers)
        by_step: dict[int, list[tuple[str, str, float]]] = {}
        for layer, metric in scalars:
            every = _schedule(metric, plan)
            at = np.arange(0, steps, every)
            for step, value in zip(at.tolist(), _walk(rng, metric, len(at)).tolist()):
                by_step.setdefault(step, []).append((layer, metric, value))
        snapshot_steps = np.arange(0, steps, plan["histograms_every"])
        counts = {(layer, metric): _histogram_counts(rng, edges, len(snapshot_steps))
                  for layer, metric, edges in histograms}  # fmt: skip
        edges_of = {(layer, metric): edges for layer, metric, edges in histograms}
        for step in range(steps):
            store.add_scalars(run, step, by_step.get(step, []))
            if step % plan["histograms_every"] == 0:
                index = step // plan["histograms_every"]
                for key, table in counts.items():
                    store.add_histogram(run, step, *key, edges_of[key], table[index])
            if step % 200 == 199:
                store.flush()
        store.end_run(run)
    rows = sum(len(v) for v in by_step.values())
    return path, {"scalar_rows": rows, "histograms": len(counts) * len(snapshot_steps),
                  "write_seconds": time.perf_counter() - started}  # fmt: skip


def read_everything(path: Path) -> float:
    """Seconds to read every scalar series and histogram of the store's run once."""
    started = time.perf_counter()
    with vs.RunStore(path, readonly=True) as store:
        for kind in ("scalar", "histogram"):
            for metric in store.metrics(1, kind=kind):
                for layer in store.series_layers(1, metric, kind=kind):
                    (store.series if kind == "scalar" else store.histograms)(1, layer, metric)
    return time.perf_counter() - started


def measure(case: str, directory: Path, repeats: int) -> dict:
    layers, scalars, histograms = discover(case, directory)
    path, written = synthesise(case, directory, layers, scalars, histograms)
    out = directory / f"{case}.html"
    read_times, render_times = [], []
    for _ in range(repeats):  # alternate baseline and candidate in one process
        read_times.append(read_everything(path))
        started = time.perf_counter()
        write_report(path, out)
        render_times.append(time.perf_counter() - started)
    text = out.read_text(encoding="utf-8")
    size_mb = out.stat().st_size / 1e6
    return {
        "case": case, **CASES[case], "layers": len(layers),
        "parameters": len({layer for layer, metric in scalars if metric == "grad_norm"}),
        **written, "store_mb": path.stat().st_size / 1e6,
        "read_seconds_median": statistics.median(read_times),
        "render_seconds_median": statistics.median(render_times),
        "render_seconds_all": render_times,
        "render_to_read_ratio": statistics.median(render_times) / statistics.median(read_times),
        "report_mb": size_mb, "budget_mb": BUDGET_MB, "size_to_budget_ratio": size_mb / BUDGET_MB,
        "figures": text.count("<img "),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "report.json"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cases = list(CASES) if args.case == "all" else [args.case]
    results = []
    with tempfile.TemporaryDirectory() as directory:
        for case in cases:
            results.append(measure(case, Path(directory), args.repeats))
    print(f"{'case':<6} {'steps':>6} {'layers':>6} {'params':>6} {'rows':>9} {'read s':>7} "
          f"{'render s':>8} {'ratio':>6} {'MB':>6} {'/15MB':>6} {'figures':>7}")  # fmt: skip
    for r in results:
        print(f"{r['case']:<6} {r['steps']:>6} {r['layers']:>6} {r['parameters']:>6} {r['scalar_rows']:>9} "
              f"{r['read_seconds_median']:>7.2f} {r['render_seconds_median']:>8.2f} "
              f"{r['render_to_read_ratio']:>6.1f} {r['report_mb']:>6.2f} {r['size_to_budget_ratio']:>6.2f} "
              f"{r['figures']:>7}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "vitalstats": vs.__version__, "repeats": args.repeats}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
