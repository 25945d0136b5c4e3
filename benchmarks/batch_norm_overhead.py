"""Where a vs.nn.BatchNorm1d training step spends its time beside torch.nn.BatchNorm1d's, on the
CPU, one thread: the forward, the backward and the whole step of both layers, and each small op
our forward adds around torch's kernel, measured in the same run.

    python benchmarks/batch_norm_overhead.py                      # (256, 1024) and (4, 1024)
    python benchmarks/batch_norm_overhead.py --shapes 1024x1024 --rounds 20

Each figure is the best over ``--rounds`` rounds of the mean over ``--calls`` calls, in
microseconds (the best round is the one the machine's other load disturbed least); ratios are
ours / torch. The (4, 1024) shape shows the fixed cost per call: there the kernels take a few
microseconds and the rest is dispatch and Python. Writes benchmarks/results/batch_norm_overhead.json.

Means over many calls depend on glibc's allocator: with its defaults, freed blocks of about
1 MB are given back to the system and faulted in again, and on a shared VM the step means of
both layers then move by 20-40 % from run to run. ``--keep-freed-memory`` keeps them in the
process (as ``monitor_overhead.py`` does by default) and steadies the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monitor_overhead import keep_freed_memory  # this script's directory is on sys.path

import vitalstats as vs
from vitalstats.nn import _batch_norm


def best_mean_us(fn: Callable[[], object], calls: int, rounds: int) -> float:
    """Best over rounds of the mean seconds per call, in microseconds."""
    for _ in range(max(calls // 10, 1)):
        fn()
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def step_parts_us(
    layers: dict[str, torch.nn.Module], x: torch.Tensor, grad: torch.Tensor, calls: int,
    rounds: int,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Forward, backward and whole-step time of each layer, the layers alternating round by
    round (a load spike hits both alike), after a warm-up of both: best round of per-call
    means, in microseconds."""
    best = {label: dict.fromkeys(("forward", "backward", "step"), math.inf) for label in layers}
    for layer in layers.values():
        for _ in range(max(calls // 10, 1)):
            layer(x).backward(grad)
    for _ in range(rounds):
        for label, layer in layers.items():
            total = dict.fromkeys(best[label], 0.0)
            for _ in range(calls):
                x.grad = None
                t0 = time.perf_counter()
                y = layer(x)
                t1 = time.perf_counter()
                y.backward(grad)
                t2 = time.perf_counter()
                total["forward"] += t1 - t0
                total["backward"] += t2 - t1
                total["step"] += t2 - t0
            for key, seconds in total.items():
                best[label][key] = min(best[label][key], seconds / calls * 1e6)
    return best


def added_ops_us(x: torch.Tensor, calls: int, rounds: int) -> dict[str, float]:
    """Each op our training forward runs beside torch's kernel, timed alone (no autograd),
    and the tensor ops the C calls replace (the forward of 2026-12-02), for comparison."""
    c = x.shape[1]
    weight, bias = torch.ones(c), torch.zeros(c)
    running_mean, running_var = torch.zeros(c), torch.ones(c)
    count = torch.tensor(0)
    invstd = torch.rand(c) + 0.5

    def as_tensor_ops() -> None:  # clones, var from invstd, guard, copy back, count
        next_mean, next_var = running_mean.clone(), running_var.clone()
        var = invstd.pow(-2).sub_(1e-5).clamp_min_(0)
        if math.isfinite(var.amax().item()):
            torch._foreach_copy_([running_mean, running_var], [next_mean, next_var])
            count.add_(1)

    ops = {
        "torch kernel (native_batch_norm)": lambda: torch.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, 0.1, 1e-5
        ),
        "snapshot of the buffers (C copy)": lambda: _batch_norm._snapshot(
            running_mean, running_var
        ),
        "batch_var, guard, count (C call)": lambda: _batch_norm.variance_from_invstd(
            invstd, 1e-5, True, count
        ),
        "the same as eight tensor ops": as_tensor_ops,
    }
    with torch.no_grad():
        return {name: best_mean_us(fn, calls, rounds) for name, fn in ops.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="256x1024,4x1024", help="comma-separated NxC")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="ask glibc to keep freed memory (see the docstring)",
    )
    parser.add_argument("--out", default="benchmarks/results/batch_norm_overhead.json")
    args = parser.parse_args()
    kept = args.keep_freed_memory and keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for text in args.shapes.split(","):
        n, c = (int(v) for v in text.split("x"))
        x = torch.randn(n, c, requires_grad=True)
        grad = torch.randn(n, c)
        layers = {"torch": torch.nn.BatchNorm1d(c), "ours": vs.nn.BatchNorm1d(c)}
        parts = step_parts_us(layers, x, grad, args.calls, args.rounds)
        ops = added_ops_us(x.detach(), args.calls, args.rounds)
        print(f"BatchNorm1d ({n}, {c}), float32, one thread (microseconds)")
        for part in ("forward", "backward", "step"):
            t, o = parts["torch"][part], parts["ours"][part]
            print(
                f"  {part:9s} torch {t:8.1f}  ours {o:8.1f}  ratio {o / t:5.2f}  extra {o - t:7.1f}"
            )
        for name, us in ops.items():
            print(f"  {name:34s} {us:8.1f}")
        rows.append({"shape": [n, c], "torch": parts["torch"], "ours": parts["ours"],
                     "step_ratio": parts["ours"]["step"] / parts["torch"]["step"],
                     "ops_us": ops})  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": 1, "machine": platform.machine(),
            "processor": platform.processor(), "calls": args.calls, "rounds": args.rounds,
            "freed_memory_kept": kept}  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
