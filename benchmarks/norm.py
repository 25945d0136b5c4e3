"""vitalstats.nn norm layers vs torch.nn's on the CPU: forward+backward time and the bytes
autograd saves for backward, float32 and bfloat16.

    python benchmarks/norm.py --threads 1        # the issue's shapes, JSON to benchmarks/results/norm.json
    python benchmarks/norm.py --scale 0.125 --rounds 2 --repeats 3   # quick smoke run

Both layers run in the same process, alternating in ``--rounds`` rounds (so a load spike hits
both alike); in each round each layer's time is the best of ``--repeats`` forward+backward
passes after a warm-up. The ratio printed and written is ours / torch per round, median over
rounds (below 1.0: ours is faster), with the best-of-all-rounds times beside it. On a shared
machine use ``--threads 1`` and compare several runs. Saved bytes are the distinct tensors
packed by autograd during the forward (``torch.autograd.graph.saved_tensors_hooks``), the
memory a layer pins until backward.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import vitalstats as vs

Case = tuple[
    str, Callable[[], torch.nn.Module], Callable[[], torch.nn.Module], tuple[int, ...], bool
]


def cases(scale: float) -> list[Case]:
    def n(size: int) -> int:
        return max(2, int(size * scale))

    return [
        ("BN1d (256, 1024)", lambda: torch.nn.BatchNorm1d(1024), lambda: vs.nn.BatchNorm1d(1024),
         (n(256), 1024), False),
        ("BN2d (64, 64, 32, 32)", lambda: torch.nn.BatchNorm2d(64), lambda: vs.nn.BatchNorm2d(64),
         (n(64), 64, 32, 32), False),
        ("BN2d (64, 64, 32, 32) channels_last", lambda: torch.nn.BatchNorm2d(64),
         lambda: vs.nn.BatchNorm2d(64), (n(64), 64, 32, 32), True),
        ("LN (32, 128, 768)", lambda: torch.nn.LayerNorm(768), lambda: vs.nn.LayerNorm(768),
         (n(32), 128, 768), False),
        ("GN 32 groups (32, 64, 56, 56)", lambda: torch.nn.GroupNorm(32, 64),
         lambda: vs.nn.GroupNorm(32, 64), (n(32), 64, 56, 56), False),
        ("IN2d (32, 64, 32, 32)", lambda: torch.nn.InstanceNorm2d(64, affine=True),
         lambda: vs.nn.InstanceNorm2d(64, affine=True), (n(32), 64, 32, 32), False),
        ("RMSNorm (32, 128, 1024)", lambda: torch.nn.RMSNorm(1024), lambda: vs.nn.RMSNorm(1024),
         (n(32), 128, 1024), False),
        ("RMSNorm (32, 128, 4096)", lambda: torch.nn.RMSNorm(4096), lambda: vs.nn.RMSNorm(4096),
         (n(32), 128, 4096), False),
    ]  # fmt: skip


def saved_bytes(layer: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one training forward."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        nbytes = t.untyped_storage().nbytes()
        seen[(t.untyped_storage().data_ptr(), nbytes)] = nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(seen.values())


def time_forward_backward(layer: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Best of ``repeats`` seconds of forward + backward (the least disturbed by others)."""
    grad = torch.randn_like(x)
    times = []
    for _ in range(repeats):
        x.grad = None
        start = time.perf_counter()
        layer(x).backward(grad)
        times.append(time.perf_counter() - start)
    return min(times)


def measure(
    make_torch: Callable[[], torch.nn.Module],
    make_ours: Callable[[], torch.nn.Module],
    x: torch.Tensor,
    rounds: int,
    repeats: int,
) -> dict[str, float]:
    """Alternating rounds of torch's and our layer on the same input."""
    layers = {"torch": make_torch().to(x.dtype), "ours": make_ours().to(x.dtype)}
    for layer in layers.values():  # warm-up
        for _ in range(2):
            layer(x).backward(torch.ones_like(x))
    per_round: dict[str, list[float]] = {"torch": [], "ours": []}
    for _ in range(rounds):
        for label, layer in layers.items():
            per_round[label].append(time_forward_backward(layer, x, repeats))
    ratios = [o / t for o, t in zip(per_round["ours"], per_round["torch"], strict=True)]
    result = {f"{label}_seconds": min(times) for label, times in per_round.items()}
    result |= {f"{label}_saved_bytes": saved_bytes(layer, x) for label, layer in layers.items()}
    result["time_ratio"] = statistics.median(ratios)
    result["time_ratio_rounds"] = ratios
    result["saved_ratio"] = result["ours_saved_bytes"] / result["torch_saved_bytes"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="batch size multiplier")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--out", default="benchmarks/results/norm.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    print(
        f"{'case':38s} {'dtype':8s} {'torch ms':>9s} {'ours ms':>9s} {'ratio':>6s} "
        f"{'torch MB':>9s} {'ours MB':>8s} {'saved':>6s}"
    )
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for name, make_torch, make_ours, shape, channels_last in cases(args.scale):
            if args.only not in name:
                continue
            x = torch.randn(shape, dtype=dtype)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            x.requires_grad_(True)
            result = {"case": name, "dtype": dtype_name, "shape": list(shape),
                      "channels_last": channels_last}  # fmt: skip
            result |= measure(make_torch, make_ours, x, args.rounds, args.repeats)
            rows.append(result)
            print(f"{name:38s} {dtype_name:8s} {result['torch_seconds'] * 1e3:9.2f} "
                  f"{result['ours_seconds'] * 1e3:9.2f} {result['time_ratio']:6.2f} "
                  f"{result['torch_saved_bytes'] / 2**20:9.2f} "
                  f"{result['ours_saved_bytes'] / 2**20:8.2f} {result['saved_ratio']:6.3f}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor(),
            "rounds": args.rounds, "repeats": args.repeats, "scale": args.scale}  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
