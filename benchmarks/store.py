"""Run-store write and read throughput: what the monitor's logging costs.

    python benchmarks/store.py [--layers 100] [--metrics 10] [--steps 300] [--flush-every 10]

Writes ``layers x metrics`` scalars per step (the monitor's heavy case), plus one 64-bin
histogram per layer every ``--hist-every`` steps, into a fresh store in a temporary
directory. Reports the caller-side cost of ``add_scalars`` (what the training loop pays with
the background flusher), the commit rate of ``flush`` (rows/s), the file size per row, and
the read rate of ``series``. Prints a table and writes JSON to benchmarks/results/store.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import vitalstats as vs


def scalar_rows(step: int, layers: int, metrics: int) -> list[tuple[str, str, float]]:
    return [
        (f"model.block{layer}.linear", f"metric_{metric}", step * 1e-3 + layer + metric * 1e-6)
        for layer in range(layers)
        for metric in range(metrics)
    ]


def measure(args: argparse.Namespace, directory: Path) -> dict[str, float]:
    path = directory / "bench.sqlite"
    store = vs.RunStore(path, flush_interval=0)  # synchronous: time adds and commits apart
    run = store.start_run("bench", config=vars(args))
    generator = np.random.default_rng(0)
    edges = np.linspace(-4, 4, args.bins + 1, dtype=np.float32)
    add_seconds, flush_seconds, histogram_seconds = [], [], []
    rows_per_step = args.layers * args.metrics
    histograms = 0
    for step in range(args.steps):
        rows = scalar_rows(step, args.layers, args.metrics)  # built outside the timing
        start = time.perf_counter()
        store.add_scalars(run, step, rows)
        add_seconds.append(time.perf_counter() - start)
        if step % args.hist_every == 0:
            counts = generator.integers(0, 1000, size=(args.layers, args.bins))
            start = time.perf_counter()
            for layer in range(args.layers):
                store.add_histogram(run, step, f"model.block{layer}.linear", "act_hist",
                                    edges, counts[layer])  # fmt: skip
            histogram_seconds.append(time.perf_counter() - start)
            histograms += args.layers
        if (step + 1) % args.flush_every == 0:
            start = time.perf_counter()
            store.flush()
            flush_seconds.append(time.perf_counter() - start)
    store.end_run(run)
    store.close()
    scalar_total = rows_per_step * args.steps
    committed_rows = scalar_total + histograms
    write_seconds = sum(add_seconds) + sum(histogram_seconds) + sum(flush_seconds)

    reader = vs.RunStore(path, readonly=True)
    start = time.perf_counter()
    read_rows = 0
    read_series = min(args.layers, 50)
    for layer in range(read_series):
        steps, _ = reader.series("bench", f"model.block{layer}.linear", "metric_0")
        read_rows += len(steps)
    read_seconds = time.perf_counter() - start
    start = time.perf_counter()
    hist = reader.histograms("bench", "model.block0.linear", "act_hist")
    histogram_read_seconds = time.perf_counter() - start
    reader.close()
    assert read_rows == read_series * args.steps and len(hist) == len(histogram_seconds)
    size = sum(p.stat().st_size for p in directory.glob("bench.sqlite*"))
    return {
        "rows_per_step": rows_per_step,
        "add_scalars_us_per_step_median": 1e6 * statistics.median(add_seconds),
        "add_scalars_ns_per_row": 1e9 * sum(add_seconds) / scalar_total,
        "flush_ms_median": 1e3 * statistics.median(flush_seconds),
        "commit_rows_per_s": committed_rows / sum(flush_seconds),
        "end_to_end_rows_per_s": committed_rows / write_seconds,
        "add_histogram_us_each": 1e6 * sum(histogram_seconds) / max(histograms, 1),
        "bytes_per_scalar_row": size / committed_rows,
        "file_mib": size / 2**20,
        "series_read_rows_per_s": read_rows / read_seconds,
        "histogram_read_ms_per_series": 1e3 * histogram_read_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--flush-every", type=int, default=10)
    parser.add_argument("--hist-every", type=int, default=50)
    parser.add_argument("--bins", type=int, default=64)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "store.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        results = measure(args, Path(directory))
    for name, value in results.items():
        print(f"{name:34s} {value:14,.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {key: value for key, value in vars(args).items() if key != "out"}
    record = {"settings": settings, "results": results,
              "machine": platform.platform(), "python": platform.python_version()}  # fmt: skip
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
