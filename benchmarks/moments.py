"""Claim: ``Moments.update`` costs at most 1.5x ``torch.var_mean`` on the same float32 tensor,
for a flat 10**7-element tensor and per-channel (N, C, H, W), while staying accurate.

    python benchmarks/moments.py                      # full size, CPU
    python benchmarks/moments.py --numel 1000000 --repeats 3 --device cuda

Each case times the best of ``--repeats`` calls of both functions in the same run (after one
warm-up call), prints the ratio and the relative variance error of each against float64 on
data far from zero (1e4 + 1e-2 * randn), and writes everything to
benchmarks/results/moments.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

import vitalstats as vs

TARGET_RATIO = 1.5


def best_time(function: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Best wall time in seconds over ``repeats`` calls, after one warm-up call."""
    function()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def run_case(
    name: str, shape: tuple[int, ...], dims: tuple[int, ...] | None, args, device: torch.device
) -> dict:
    generator = torch.Generator(device=device).manual_seed(0)
    x = 1e4 + 1e-2 * torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    var_mean_dims = dims if dims is not None else tuple(range(x.dim()))
    moments = vs.stats.Moments(dims, exclude_nonfinite=not args.include_nonfinite)

    baseline = best_time(
        lambda: torch.var_mean(x, dim=var_mean_dims, correction=0), args.repeats, device
    )
    ours = best_time(lambda: moments.update(x), args.repeats, device)

    reference = torch.var_mean(x.double(), dim=var_mean_dims, correction=0)[0]
    baseline_var = torch.var_mean(x, dim=var_mean_dims, correction=0)[0].double()
    ours_var = vs.stats.Moments(dims).update(x).var()
    error = ((ours_var - reference).abs() / reference).max().item()
    baseline_error = ((baseline_var - reference).abs() / reference).max().item()
    return {
        "case": name,
        "shape": list(shape),
        "dims": list(var_mean_dims),
        "var_mean_ms": baseline * 1e3,
        "moments_update_ms": ours * 1e3,
        "ratio": ours / baseline,
        "meets_target": ours / baseline <= TARGET_RATIO,
        "var_rel_error_moments": error,
        "var_rel_error_var_mean": baseline_error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numel", type=int, default=10**7, help="elements per tensor")
    parser.add_argument("--repeats", type=int, default=20, help="best of this many calls")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--include-nonfinite",
        action="store_true",
        help="time Moments(exclude_nonfinite=False) (skips the NaN/Inf masking passes)",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "moments.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    channels, side = 64, max(1, round((args.numel / 64 / 64) ** 0.5))
    cases = [
        ("flat", (args.numel,), None),
        ("NCHW per-channel", (64, channels, side, side), (0, 2, 3)),
    ]
    results = [run_case(name, shape, dims, args, device) for name, shape, dims in cases]

    print(
        f"{'case':<18} {'shape':<22} {'var_mean ms':>11} {'Moments ms':>11} {'ratio':>6} "
        f"{'target':>7} {'rel err ours':>13} {'rel err var_mean':>16}"
    )
    for r in results:
        print(
            f"{r['case']:<18} {tuple(r['shape'])!s:<22} {r['var_mean_ms']:>11.2f} "
            f"{r['moments_update_ms']:>11.2f} {r['ratio']:>6.2f} "
            f"{'ok' if r['meets_target'] else 'MISSED':>7} {r['var_rel_error_moments']:>13.1e} "
            f"{r['var_rel_error_var_mean']:>16.1e}"
        )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "moments",
                "target_ratio": TARGET_RATIO,
                "torch": torch.__version__,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine(),
                "exclude_nonfinite": not args.include_nonfinite,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
