"""Overhead of vs.Monitor on a training step, against plain and a TensorBoard baseline.

    python benchmarks/monitor_overhead.py                       # every model (several minutes)
    python benchmarks/monitor_overhead.py --models mlp,cnn --steps-per-variant 100  # quicker

Times the same training loop (Adam, cross-entropy, synthetic data) several ways, alternating
rounds in one process so machine noise hits every variant alike, on one CPU thread:
  plain       no monitoring
  default     vs.Monitor at default settings (MonitorConfig())
  everything  vs.Monitor measuring everything every step (MonitorConfig.everything())
  compiled    the same with torch.compile'd statistics kernels (kernels="compiled"; the
              one-time compile happens in the untimed warm-up and is reported separately)
  tensorboard histograms of every weight and gradient each step with torch's SummaryWriter
              (what wandb.watch(log="all", log_freq=1) does)

The figure of record is the **mean** step time over at least two periods of the slowest
probe (histograms, every 250 steps by default: 500 timed steps per variant), which includes
the periodic probes and flushes a user pays for; the median (the cheap steps) and the
median thread CPU time are printed beside it. Models: a 784-1024-512-256-10 ReLU MLP at
batch 128, a small conv-BN-ReLU CNN on 3x32x32 at batch 64, a GPT-2-shaped transformer
(transformers' GPT2LMHeadModel, 4 layers, width 256, 128 tokens, batch 8) and a
ResNet-18-shaped CNN (transformers' ResNetForImageClassification, basic blocks [2, 2, 2, 2]
on 3x32x32, batch 16). Writes JSON to benchmarks/results/monitor_overhead.json.
Targets: default <= 1.03x on every model, everything <= 1.15x (MLP, CNN).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from torch import nn

import vitalstats as vs
from vitalstats.monitor import MonitorConfig

LONGEST_DEFAULT_PERIOD = MonitorConfig().histograms_every

Batch = tuple[torch.Tensor, torch.Tensor]
Factory = Callable[[], tuple[nn.Module, Callable[[nn.Module, Batch], torch.Tensor], Batch]]


def _classifier_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, y = batch
    out = model(x)
    logits = out.logits if hasattr(out, "logits") else out
    return nn.functional.cross_entropy(logits, y)


def mlp():
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise((784, 1024, 512, 256)):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(256, 10))
    return model, _classifier_loss, (torch.randn(128, 784), torch.randint(0, 10, (128,)))


def cnn():
    def block(a: int, b: int) -> list[nn.Module]:
        return [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(),
                nn.MaxPool2d(2)]  # fmt: skip

    model = nn.Sequential(
        *block(3, 16), *block(16, 32), *block(32, 64), nn.Flatten(), nn.Linear(64 * 4 * 4, 10)
    )
    return model, _classifier_loss, (torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=128, vocab_size=512,
                        bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = GPT2LMHeadModel(config)
    tokens = torch.randint(0, 512, (8, 128))

    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(input_ids=batch[0], labels=batch[1]).loss

    return model, loss, (tokens, tokens)


def resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
                          embedding_size=64, num_labels=10)  # fmt: skip
    model = ResNetForImageClassification(config)
    return model, _classifier_loss, (torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))


MODELS: dict[str, Factory] = {"mlp": mlp, "cnn": cnn, "gpt2": gpt2, "resnet": resnet}
VARIANTS = {
    "mlp": ("plain", "default", "everything", "compiled", "tensorboard"),
    "cnn": ("plain", "default", "everything", "compiled", "tensorboard"),
    "gpt2": ("plain", "default"),
    "resnet": ("plain", "default"),
}


class Variant:
    """One copy of the model and optimiser with its own monitoring."""

    def __init__(self, kind: str, base: nn.Module, loss_fn, log_dir: str) -> None:
        self.kind, self.loss_fn = kind, loss_fn
        self.model = copy.deepcopy(base)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.monitor = None
        self.writer = None
        self.step_index = 0
        if kind == "default":
            self.monitor = vs.Monitor(self.model, optimizer=self.optimizer)
        elif kind in ("everything", "compiled"):
            kernels = "compiled" if kind == "compiled" else "eager"
            config = MonitorConfig.everything(kernels=kernels)
            self.monitor = vs.Monitor(self.model, optimizer=self.optimizer, config=config)
        elif kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=os.path.join(log_dir, "tb"))

    def step(self, batch: Batch) -> None:
        loss = self.loss_fn(self.model, batch)
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


def bench_model(name: str, steps: int, rounds: int, warmup: int, variants: tuple[str, ...]) -> dict:
    torch.manual_seed(0)
    base, loss_fn, batch = MODELS[name]()
    per_round = max(1, steps // rounds)
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu_times: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as log_dir:
        runs = [Variant(kind, base, loss_fn, log_dir) for kind in variants]
        warmup_s: dict[str, float] = {}
        for run in runs:  # untimed: first probes, allocations, lazy imports, compiles
            start = time.perf_counter()
            for _ in range(warmup):
                run.step(batch)
            warmup_s[run.kind] = time.perf_counter() - start
        for _ in range(rounds):  # alternate: each round runs every variant for per_round steps
            for run in runs:
                for _ in range(per_round):
                    start, cpu_start = time.perf_counter(), time.thread_time()
                    run.step(batch)
                    times[run.kind].append(time.perf_counter() - start)
                    cpu_times[run.kind].append(time.thread_time() - cpu_start)
        for run in runs:
            run.close()
    means = {k: statistics.fmean(v) for k, v in times.items()}
    medians = {k: statistics.median(v) for k, v in times.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu_times.items()}
    return {
        "model": name,
        "parameters": sum(p.numel() for p in base.parameters()),
        "timed_steps_per_variant": len(times["plain"]),
        "warmup_s": warmup_s,
        "mean_step_ms": {k: v * 1e3 for k, v in means.items()},
        "mean_ratio_to_plain": {k: means[k] / means["plain"] for k in variants},
        "median_step_ms": {k: v * 1e3 for k, v in medians.items()},
        "median_ratio_to_plain": {k: medians[k] / medians["plain"] for k in variants},
        "median_thread_cpu_ms": {k: v * 1e3 for k, v in cpu_medians.items()},
        "thread_cpu_ratio_to_plain": {k: cpu_medians[k] / cpu_medians["plain"] for k in variants},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn,gpt2,resnet", help="comma-separated")
    parser.add_argument("--steps-per-variant", type=int, default=2 * LONGEST_DEFAULT_PERIOD,
                        help="timed steps per variant (the default: two histogram periods)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=10, help="alternation rounds")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant")
    parser.add_argument("--variants", default=None, help="override, e.g. plain,default")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "monitor_overhead.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.steps_per_variant < 2 * LONGEST_DEFAULT_PERIOD:
        print(f"note: {args.steps_per_variant} timed steps cover less than two periods of the "
              f"slowest default probe ({LONGEST_DEFAULT_PERIOD} steps): the mean is not of record")  # fmt: skip
    results = []
    for name in args.models.split(","):
        variants = tuple(args.variants.split(",")) if args.variants else VARIANTS[name]
        result = bench_model(name, args.steps_per_variant, args.rounds, args.warmup, variants)
        results.append(result)
        cells = "  ".join(
            f"{v} {result['mean_ratio_to_plain'][v]:.3f}x (median {result['median_ratio_to_plain'][v]:.3f}x)"
            for v in variants[1:]
        )
        print(f"{name:7} plain {result['mean_step_ms']['plain']:8.2f} ms  {cells}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "torch": torch.__version__,
        "vitalstats": vs.__version__,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "figure_of_record": "mean_ratio_to_plain",
        "targets": {"default": 1.03, "everything": 1.15},
        "results": results,
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
