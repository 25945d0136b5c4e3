"""Overhead of vs.Monitor on a training step, against plain and a TensorBoard baseline.

    python benchmarks/monitor_overhead.py                 # full run (a few minutes)
    python benchmarks/monitor_overhead.py --rounds 3 --steps 10   # quick check

Times the same training loop (Adam, cross-entropy, synthetic data) four ways, alternating
in one process so machine noise hits every variant alike, on one CPU thread:
  plain       no monitoring
  default     vs.Monitor at default settings (MonitorConfig())
  everything  vs.Monitor measuring everything every step (MonitorConfig.everything())
  tensorboard histograms of every weight and gradient each step with torch's SummaryWriter
              (what wandb.watch(log="all", log_freq=1) does)
Wall-clock medians are the figures of record; the JSON also has the median thread CPU time
(time.thread_time), which a loaded machine disturbs less.
Models: a 784-1024-512-256-10 ReLU MLP at batch 128 and a small conv-BN-ReLU CNN on 3x32x32
at batch 64. Prints the median step time of each variant over plain and writes JSON to
benchmarks/results/monitor_overhead.json. Targets: default <= 1.03x, everything <= 1.15x.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import itertools

import torch
from torch import nn

import vitalstats as vs
from vitalstats.monitor import MonitorConfig

VARIANTS = ("plain", "default", "everything", "tensorboard")


def mlp() -> tuple[nn.Module, tuple[int, ...], int]:
    layers: list[nn.Module] = []
    widths = (784, 1024, 512, 256)
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(256, 10)), (784,), 128


def cnn() -> tuple[nn.Module, tuple[int, ...], int]:
    def block(a: int, b: int) -> list[nn.Module]:
        return [
            nn.Conv2d(a, b, 3, padding=1, bias=False),
            nn.BatchNorm2d(b),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]

    model = nn.Sequential(
        *block(3, 16), *block(16, 32), *block(32, 64), nn.Flatten(), nn.Linear(64 * 4 * 4, 10)
    )
    return model, (3, 32, 32), 64


class Variant:
    """One copy of the model and optimiser with its own monitoring."""

    def __init__(self, kind: str, base: nn.Module, log_dir: str) -> None:
        self.kind = kind
        self.model = copy.deepcopy(base)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.monitor = None
        self.writer = None
        self.step_index = 0
        if kind == "default":
            self.monitor = vs.Monitor(self.model, optimizer=self.optimizer)
        elif kind == "everything":
            self.monitor = vs.Monitor(
                self.model, optimizer=self.optimizer, config=MonitorConfig.everything()
            )
        elif kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=os.path.join(log_dir, "tb"))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.monitor is not None:
            self.monitor.step(loss=loss)
        if self.writer is not None:
            for name, p in self.model.named_parameters():
                self.writer.add_histogram(name, p, self.step_index)
                self.writer.add_histogram(f"{name}.grad", p.grad, self.step_index)
            self.writer.add_scalar("loss", loss, self.step_index)
        self.step_index += 1

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
        if self.writer is not None:
            self.writer.close()


def bench_model(name: str, factory, rounds: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    base, shape, batch = factory()
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu_times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as log_dir:
        variants = [Variant(kind, base, log_dir) for kind in VARIANTS]
        for variant in variants:
            for _ in range(warmup):
                variant.step(x, y)
        for _ in range(rounds):  # alternate: each round runs every variant for `steps` steps
            for variant in variants:
                for _ in range(steps):
                    start, cpu_start = time.perf_counter(), time.thread_time()
                    variant.step(x, y)
                    times[variant.kind].append(time.perf_counter() - start)
                    cpu_times[variant.kind].append(time.thread_time() - cpu_start)
        for variant in variants:
            variant.close()
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratios = {k: medians[k] / medians["plain"] for k in VARIANTS}
    cpu_medians = {k: statistics.median(v) for k, v in cpu_times.items()}
    cpu_ratios = {k: cpu_medians[k] / cpu_medians["plain"] for k in VARIANTS}
    return {
        "model": name,
        "batch": batch,
        "median_step_ms": {k: v * 1e3 for k, v in medians.items()},
        "ratio_to_plain": ratios,
        "median_thread_cpu_ms": {k: v * 1e3 for k, v in cpu_medians.items()},
        "thread_cpu_ratio_to_plain": cpu_ratios,
        "samples_per_variant": len(times["plain"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="alternation rounds")
    parser.add_argument("--steps", type=int, default=50, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per variant")
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp,cnn")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "monitor_overhead.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    factories = {"mlp": mlp, "cnn": cnn}
    results = [
        bench_model(m, factories[m], args.rounds, args.steps, args.warmup)
        for m in args.models.split(",")
    ]
    header = f"{'model':6} {'clock':6} {'plain ms':>9} "
    print(header + " ".join(f"{v:>12}" for v in VARIANTS[1:]))
    for r in results:
        for clock, ms, ratio in (
            ("wall", "median_step_ms", "ratio_to_plain"),
            ("cpu", "median_thread_cpu_ms", "thread_cpu_ratio_to_plain"),
        ):
            cells = " ".join(f"{r[ratio][v]:11.3f}x" for v in VARIANTS[1:])
            print(f"{r['model']:6} {clock:6} {r[ms]['plain']:9.2f} {cells}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "torch": torch.__version__,
        "vitalstats": vs.__version__,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "steps": args.steps,
        "targets": {"default": 1.03, "everything": 1.15},
        "results": results,
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
