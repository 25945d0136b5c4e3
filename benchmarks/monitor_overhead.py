"""Overhead of vs.Monitor on a training step, against plain and a TensorBoard baseline.

    python benchmarks/monitor_overhead.py                       # every model (several minutes)
    python benchmarks/monitor_overhead.py --models mlp,cnn --steps-per-variant 100  # quicker

Times one training loop (Adam, cross-entropy, synthetic data; one model and optimiser) several
ways, alternating rounds in one process (forward, then reversed order: a drift over the run
hits every variant alike), on one CPU thread; each variant's monitor is attached for its own
rounds only:
  plain       no monitoring
  control     plain again, in its own rounds: plain-vs-plain (A/A) shows the noise floor
  default     vs.Monitor at default settings (MonitorConfig())
  default_eager  the same with kernels="eager" (the plain ATen statistics)
  everything  vs.Monitor measuring everything every step (MonitorConfig.everything(); its
              kernels="auto" runs the CPU C kernels of vitalstats.stats.native, built in
              the untimed warm-up if not cached)
  eager       the same with the plain ATen kernels (kernels="eager"): what the C kernels save
  compiled    the same with kernels="compiled" (torch.compile'd kernels on an accelerator;
              on the CPU the C kernels again; the one-time compile happens in the untimed
              warm-up and is reported separately)
  tensorboard histograms of every weight and gradient each step with torch's SummaryWriter
              (what wandb.watch(log="all", log_freq=1) does)

The figure of record is the **mean** step time over at least two periods of the slowest
probe (histograms, every 250 steps by default: 500 timed steps per variant), which includes
the periodic probes and flushes a user pays for. Beside it: the median (the cheap steps),
the median thread CPU time, and the **schedule-weighted median**: steps are grouped by the
default schedule's classes (cheap, gradient norms, probes, flush, histograms), each class's
median is weighted by how many steps of that class the run had; it keeps every periodic
cost and drops the machine's one-off stalls, which on a shared machine move the mean of
either variant by several per cent (the control's ratios show by how much). Models: a 784-1024-512-256-10 ReLU MLP at
batch 128, a small conv-BN-ReLU CNN on 3x32x32 at batch 64, a GPT-2-shaped transformer
(transformers' GPT2LMHeadModel, 4 layers, width 256, 128 tokens, batch 8) and a
ResNet-18-shaped CNN (transformers' ResNetForImageClassification, basic blocks [2, 2, 2, 2]
on 3x32x32, batch 16). Writes JSON to benchmarks/results/monitor_overhead.json.
Targets: default <= 1.03x on every model, everything <= 1.15x (MLP, CNN).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import itertools
import json
import logging
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

DEFAULTS = MonitorConfig()
LONGEST_DEFAULT_PERIOD = DEFAULTS.histograms_every

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
    "mlp": ("plain", "control", "default", "default_eager", "everything", "eager", "tensorboard"),
    "cnn": ("plain", "control", "default", "default_eager", "everything", "eager", "tensorboard"),
    "gpt2": ("plain", "control", "default"),
    "resnet": ("plain", "control", "default"),
}


def schedule_class(step: int, config: MonitorConfig = DEFAULTS) -> str:
    """Which of the default schedule's kinds of step ``step`` is (its costliest probe)."""
    for name, every in (("histograms", config.histograms_every), ("flush", config.flush_every),
                        ("probes", config.activations_every),
                        ("grad_norms", config.grad_norm_every)):  # fmt: skip
        if every and step % every == 0:
            return name
    return "cheap"


def schedule_weighted_median(samples: list[tuple[int, float]]) -> float:
    """Mean over steps of their class's median step time (``schedule_class``)."""
    by_class: dict[str, list[float]] = {}
    for step, seconds in samples:
        by_class.setdefault(schedule_class(step), []).append(seconds)
    total = sum(statistics.median(v) * len(v) for v in by_class.values())
    return total / len(samples)


class Mode:
    """One way of running the shared loop: its monitor (or TensorBoard writer) is attached
    for its own rounds only, and counts its own steps, so its schedule is that of a run
    monitored from the start."""

    def __init__(self, kind: str, model: nn.Module, optimizer, log_dir: str) -> None:
        self.kind = kind
        self.monitor = None
        self.writer = None
        self.step_index = 0
        if kind == "default":
            self.monitor = vs.Monitor(model, optimizer=optimizer)
        elif kind == "default_eager":
            self.monitor = vs.Monitor(
                model, optimizer=optimizer, config=MonitorConfig(kernels="eager")
            )
        elif kind in ("everything", "eager", "compiled"):
            kernels = {"everything": "auto", "eager": "eager", "compiled": "compiled"}[kind]
            config = MonitorConfig.everything(kernels=kernels)
            self.monitor = vs.Monitor(model, optimizer=optimizer, config=config)
        elif kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=os.path.join(log_dir, "tb"))
        if self.monitor is not None:
            self.monitor.detach()

    def begin(self) -> None:
        if self.monitor is not None:
            self.monitor.attach()

    def end(self) -> float:
        """Detach, and wait for this mode's background writes (the run store's writer thread,
        TensorBoard's event writer) so that they do not run into the next mode's rounds;
        returns the seconds waited, which count as this mode's."""
        start = time.perf_counter()
        if self.monitor is not None:
            self.monitor.detach()
            self.monitor.sync_store()
        if self.writer is not None:
            self.writer.flush()
        return time.perf_counter() - start

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
        if self.writer is not None:
            self.writer.close()


class Loop:
    """The training loop: one model and optimiser shared by every mode. (Two copies of the
    same model differ by up to +-5 % in step time from where their tensors sit in memory,
    more than the effect measured; one copy removes that.)"""

    def __init__(self, base: nn.Module, loss_fn, kinds: tuple[str, ...], log_dir: str) -> None:
        self.loss_fn = loss_fn
        self.model = copy.deepcopy(base)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.modes = [Mode(kind, self.model, self.optimizer, log_dir) for kind in kinds]

    def step(self, mode: Mode, batch: Batch) -> None:
        loss = self.loss_fn(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if mode.monitor is not None:
            mode.monitor.step(loss=loss)
        if mode.writer is not None:
            for name, p in self.model.named_parameters():
                mode.writer.add_histogram(name, p, mode.step_index)
                mode.writer.add_histogram(f"{name}.grad", p.grad, mode.step_index)
            mode.writer.add_scalar("loss", loss, mode.step_index)
        mode.step_index += 1

    def close(self) -> None:
        for mode in self.modes:
            mode.close()


def bench_model(name: str, steps: int, rounds: int, warmup: int, variants: tuple[str, ...]) -> dict:
    torch.manual_seed(0)
    base, loss_fn, batch = MODELS[name]()
    per_round = max(1, steps // rounds)
    times: dict[str, list[float]] = {v: [] for v in variants}
    stepped: dict[str, list[tuple[int, float]]] = {v: [] for v in variants}
    cpu_times: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as log_dir:
        loop = Loop(base, loss_fn, variants, log_dir)
        warmup_s: dict[str, float] = {}
        for mode in loop.modes:  # untimed: first probes, allocations, lazy imports, compiles
            mode.begin()
            start = time.perf_counter()
            for _ in range(warmup):
                loop.step(mode, batch)
            warmup_s[mode.kind] = time.perf_counter() - start
            mode.end()
        for r in range(rounds):  # each round runs every mode for per_round steps, in the
            # order A B C ... then ... C B A (a drift over the run hits every mode alike)
            for mode in loop.modes if r % 2 == 0 else loop.modes[::-1]:
                mode.begin()
                for _ in range(per_round):
                    step, start, cpu_start = (
                        mode.step_index,
                        time.perf_counter(),
                        time.thread_time(),
                    )
                    loop.step(mode, batch)
                    times[mode.kind].append(time.perf_counter() - start)
                    stepped[mode.kind].append((step, times[mode.kind][-1]))
                    cpu_times[mode.kind].append(time.thread_time() - cpu_start)
                waited = mode.end()  # the round's last step pays for its pending writes
                times[mode.kind][-1] += waited
                stepped[mode.kind][-1] = (step, times[mode.kind][-1])
        loop.close()
    means = {k: statistics.fmean(v) for k, v in times.items()}
    medians = {k: statistics.median(v) for k, v in times.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu_times.items()}
    weighted = {k: schedule_weighted_median(v) for k, v in stepped.items()}
    return {
        "model": name,
        "parameters": sum(p.numel() for p in base.parameters()),
        "timed_steps_per_variant": len(times["plain"]),
        "warmup_s": warmup_s,
        "mean_step_ms": {k: v * 1e3 for k, v in means.items()},
        "mean_ratio_to_plain": {k: means[k] / means["plain"] for k in variants},
        "median_step_ms": {k: v * 1e3 for k, v in medians.items()},
        "median_ratio_to_plain": {k: medians[k] / medians["plain"] for k in variants},
        "schedule_weighted_median_ms": {k: v * 1e3 for k, v in weighted.items()},
        "schedule_weighted_ratio_to_plain": {k: weighted[k] / weighted["plain"] for k in variants},
        "median_thread_cpu_ms": {k: v * 1e3 for k, v in cpu_medians.items()},
        "thread_cpu_ratio_to_plain": {k: cpu_medians[k] / cpu_medians["plain"] for k in variants},
    }


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process (no trimming, no per-block mmap for
    blocks up to 32 MiB): steps then reuse warm pages instead of faulting them in."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(
        libc.mallopt(option, value) == 1
        for option, value in ((m_mmap_threshold, 32 << 20), (m_trim_threshold, 2**31 - 1),
                              (m_top_pad, 64 << 20))
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn,gpt2,resnet", help="comma-separated")
    parser.add_argument("--steps-per-variant", type=int, default=2 * LONGEST_DEFAULT_PERIOD,
                        help="timed steps per variant (the default: two histogram periods)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=10, help="alternation rounds")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant")
    parser.add_argument("--variants", default=None, help="override, e.g. plain,default")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's default trimming (noisier, see the docstring)")  # fmt: skip
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "monitor_overhead.json")
    )
    args = parser.parse_args()
    malloc_kept = False if args.system_malloc else keep_freed_memory()
    logging.getLogger("vitalstats").setLevel(logging.ERROR)
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
            f"{v} {result['mean_ratio_to_plain'][v]:.3f}x (median "
            f"{result['median_ratio_to_plain'][v]:.3f}x, weighted "
            f"{result['schedule_weighted_ratio_to_plain'][v]:.3f}x)"
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
        "malloc_keeps_freed_memory": malloc_kept,
        "figure_of_record": "mean_ratio_to_plain",
        "targets": {"default": 1.03, "everything": 1.15},
        "results": results,
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
