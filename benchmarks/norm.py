"""vitalstats.nn norm layers vs torch.nn's native ones on the CPU: forward+backward time and
the bytes autograd saves for backward, float32.

    python benchmarks/norm.py                    # the issue's shapes, JSON to benchmarks/results/norm.json
    python benchmarks/norm.py --scale 0.125 --repeats 3   # quick smoke run

Time ratio = ours / torch (best of ``--repeats`` timed forward+backward passes after a
warm-up; the median ratio is printed and written too); below 1.0 means we are faster. On a
shared machine use ``--threads 1`` and compare several runs. Saved bytes are the distinct tensors packed by
autograd during the forward (``torch.autograd.graph.saved_tensors_hooks``), the memory a
layer pins until backward.
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


def time_forward_backward(
    layer: torch.nn.Module, x: torch.Tensor, repeats: int
) -> tuple[float, float]:
    """(best, median) seconds of forward + backward; the ratio uses the best, which is the
    least disturbed by other processes."""
    grad = torch.randn_like(x)
    for _ in range(2):  # warm-up
        layer(x).backward(grad)
    times = []
    for _ in range(repeats):
        x.grad = None
        start = time.perf_counter()
        layer(x).backward(grad)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--scale", type=float, default=1.0, help="batch size multiplier")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default="benchmarks/results/norm.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    print(
        f"{'case':40s} {'torch ms':>9s} {'ours ms':>9s} {'ratio':>6s} {'median':>6s} "
        f"{'torch MB':>9s} {'ours MB':>8s}"
    )
    for name, make_torch, make_ours, shape, channels_last in cases(args.scale):
        x = torch.randn(shape)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        x.requires_grad_(True)
        result = {"case": name, "shape": list(shape), "channels_last": channels_last}
        for label, layer in (("torch", make_torch()), ("ours", make_ours())):
            best, median = time_forward_backward(layer, x, args.repeats)
            result[f"{label}_seconds"], result[f"{label}_median_seconds"] = best, median
            result[f"{label}_saved_bytes"] = saved_bytes(layer, x)
        result["time_ratio"] = result["ours_seconds"] / result["torch_seconds"]
        result["median_time_ratio"] = result["ours_median_seconds"] / result["torch_median_seconds"]
        result["saved_ratio"] = result["ours_saved_bytes"] / result["torch_saved_bytes"]
        rows.append(result)
        print(f"{name:40s} {result['torch_seconds'] * 1e3:9.2f} {result['ours_seconds'] * 1e3:9.2f} "
              f"{result['time_ratio']:6.2f} {result['median_time_ratio']:6.2f} "
              f"{result['torch_saved_bytes'] / 2**20:9.1f} "
              f"{result['ours_saved_bytes'] / 2**20:8.1f}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor(),
            "repeats": args.repeats, "scale": args.scale}  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
