"""Claim: ``vs.init.propagate`` costs at most 1.5x one plain forward+backward.

Model: the CLI's MLP (depth x Linear(width) + tanh), default 50 x 1024, batch 512. "Plain" is
``model(x)`` then ``(y * g).sum().backward()`` (g ~ N(0, 1)), the same unit loss propagate
uses; propagate adds its per-layer reductions, hooks, buffer restore and the theory column.
Prints the medians and their ratio and writes benchmarks/results/propagate.json.

    python benchmarks/propagate.py                      # the claim's setting
    python benchmarks/propagate.py --depth 10 --width 256 --batch 128 --repeats 5   # quick
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import vitalstats as vs

CLAIM_RATIO = 1.5


def _time_once(function, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _interleaved(first, second, device: torch.device, repeats: int, warmup: int):
    """Alternate the two so drifting machine load hits both alike."""
    for _ in range(warmup):
        first()
        second()
    times = [(_time_once(first, device), _time_once(second, device)) for _ in range(repeats)]
    return [t[0] for t in times], [t[1] for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "propagate.json"
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    model = vs.init.build_mlp(
        args.depth, args.width, args.activation, "kaiming", generator=generator
    ).to(device)
    x = torch.randn(args.batch, args.width, generator=generator).to(device)
    direction = torch.randn(args.batch, args.width, generator=generator).to(device)

    def plain() -> None:
        (model(x) * direction).sum().backward()
        model.zero_grad(set_to_none=True)

    def analysed() -> None:
        vs.init.propagate(model, x)

    plain_times, propagate_times = _interleaved(plain, analysed, device, args.repeats, args.warmup)
    plain_median, propagate_median = (
        statistics.median(plain_times),
        statistics.median(propagate_times),
    )
    ratio = propagate_median / plain_median
    result = {
        "benchmark": "propagate",
        "claim": f"propagate <= {CLAIM_RATIO}x one plain forward+backward",
        "config": {
            key: getattr(args, key)
            for key in ("depth", "width", "batch", "activation", "repeats", "warmup")
        },
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "plain_seconds_median": plain_median,
        "propagate_seconds_median": propagate_median,
        "ratio": ratio,
        "within_claim": ratio <= CLAIM_RATIO,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.depth} x Linear({args.width}) + {args.activation}, batch {args.batch}, {result['device']}: "
        f"plain fwd+bwd {1e3 * plain_median:.1f} ms, propagate {1e3 * propagate_median:.1f} ms, "
        f"ratio {ratio:.2f} (claim <= {CLAIM_RATIO}: {'ok' if result['within_claim'] else 'NOT MET'})"
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
