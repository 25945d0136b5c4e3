"""vitalstats.optim on the CPU: Adam/AdamW step time against torch's foreach optimisers, and
grad_stats against the seeds' per-parameter ``.norm().item()`` loop, for a 25M-parameter model.

    python benchmarks/optim.py                      # the issue's 25M model, JSON to benchmarks/results/optim.json
    python benchmarks/optim.py --width 128 --repeats 3   # quick smoke run
    python benchmarks/optim.py --device cuda        # the same on a GPU, where .item() syncs

Claims checked (ratio = ours / baseline, median of ``--repeats`` timings, after a warm-up step
that creates the optimiser state; ours and torch's alternate so drift hits both alike):

* ``vs.optim.Adam`` / ``AdamW`` step vs ``torch.optim.Adam/AdamW(foreach=True)``: target <= 1.05
* ``vs.optim.grad_stats`` vs the seeds' ``log_gradient_stats`` loop: target <= 0.5

Also reported, without a target: ``moment_stats``, ``AdamW(fused=True)``, ``grad_stats`` on a
small model, ``clip_grad_norm_`` vs torch's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import vitalstats as vs


def transformer_like(width: int, blocks: int, vocabulary: int) -> torch.nn.Module:
    """Parameters shaped like a small GPT: an embedding, then per block two LayerNorms,
    a fused QKV projection, an output projection and a 4x MLP (weights and biases)."""
    layers: list[torch.nn.Module] = [torch.nn.Embedding(vocabulary, width)]
    for _ in range(blocks):
        layers += [
            torch.nn.LayerNorm(width),
            torch.nn.Linear(width, 3 * width),
            torch.nn.Linear(width, width),
            torch.nn.LayerNorm(width),
            torch.nn.Linear(width, 4 * width),
            torch.nn.Linear(4 * width, width),
        ]
    return torch.nn.Sequential(*layers, torch.nn.LayerNorm(width))


def fill_gradients(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.grad = (torch.randn(param.shape, generator=generator) * 1e-2).to(param.device)


def seeds_log_gradient_stats(model: torch.nn.Module, step: int) -> dict:
    """Seed 000's ``log_gradient_stats``, verbatim in behaviour: the baseline."""
    grad_norms = []
    for _, param in model.named_parameters():
        if param.grad is not None:
            grad_norms.append(param.grad.norm().item())
    if not grad_norms:
        return {}
    return {
        "step": step,
        "grad_norm_mean": float(np.mean(grad_norms)),
        "grad_norm_std": float(np.std(grad_norms)),
        "grad_norm_max": float(np.max(grad_norms)),
    }


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def alternate(ours: Callable[[], object], baseline: Callable[[], object], repeats: int):
    """Seconds of each, timed in alternation after one warm-up call of each."""
    ours(), baseline()
    times: dict[str, list[float]] = {"ours": [], "baseline": []}
    for _ in range(repeats):
        for label, function in (("ours", ours), ("baseline", baseline)):
            synchronize()
            start = time.perf_counter()
            function()
            synchronize()
            times[label].append(time.perf_counter() - start)
    return times["ours"], times["baseline"]


def row(name: str, ours: list[float], baseline: list[float], target: float | None) -> dict:
    """Ratio of medians (the claim) and of minima (robust when other processes share the
    machine: interference only ever adds time)."""
    ratio = statistics.median(ours) / statistics.median(baseline)
    ratio_of_minima = min(ours) / min(baseline)
    verdict = "" if target is None else ("ok" if ratio <= target else f"misses <= {target}")
    print(
        f"{name:48s} {statistics.median(baseline) * 1e3:9.2f} "
        f"{statistics.median(ours) * 1e3:9.2f} {ratio:6.3f} {ratio_of_minima:8.3f}  {verdict}"
    )
    return {"case": name, "baseline_seconds": baseline, "ours_seconds": ours, "ratio": ratio,
            "ratio_of_minima": ratio_of_minima, "target": target}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--vocabulary", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu", help="cpu (the claims) or cuda")
    parser.add_argument("--out", default="benchmarks/results/optim.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = transformer_like(args.width, args.blocks, args.vocabulary).to(args.device)
    parameters = sum(p.numel() for p in model.parameters())
    tensors = len(list(model.parameters()))
    print(f"model: {parameters / 1e6:.1f}M parameters in {tensors} tensors, "
          f"{args.device}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"{'case (median ms)':48s} {'base':>9s} {'ours':>9s} {'ratio':>6s} {'min ratio':>8s}")
    fill_gradients(model, seed=1)
    rows = []

    for ours_class, torch_class in ((vs.optim.Adam, torch.optim.Adam),
                                    (vs.optim.AdamW, torch.optim.AdamW)):  # fmt: skip
        # Both optimisers step the same parameters, each with its own state.
        ours = ours_class(model.parameters(), lr=1e-4, weight_decay=0.01)
        theirs = torch_class(model.parameters(), lr=1e-4, weight_decay=0.01, foreach=True)
        ours_time, torch_time = alternate(ours.step, theirs.step, args.repeats)
        name = f"{ours_class.__name__}.step vs torch foreach=True"
        rows.append(row(name, ours_time, torch_time, 1.05))
        if ours_class is vs.optim.AdamW:
            stats_time, step_time = alternate(ours.moment_stats, ours.step, args.repeats)
            rows.append(row("moment_stats vs one AdamW step", stats_time, step_time, None))
            fused = ours_class(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
            fused_time, torch_time = alternate(fused.step, theirs.step, args.repeats)
            rows.append(row("AdamW(fused=True).step vs torch foreach=True", fused_time,
                            torch_time, None))  # fmt: skip
            del fused
        del ours, theirs

    ours_time, loop_time = alternate(
        lambda: vs.optim.grad_stats(model),
        lambda: seeds_log_gradient_stats(model, 0),
        args.repeats,
    )
    rows.append(row("grad_stats vs seeds' per-parameter loop", ours_time, loop_time, 0.5))
    # The same 87 tensors at 1/16 of the width: per-call overhead instead of memory traffic.
    small = transformer_like(args.width // 16, args.blocks, args.vocabulary // 16).to(args.device)
    fill_gradients(small, seed=2)
    ours_time, loop_time = alternate(
        lambda: vs.optim.grad_stats(small),
        lambda: seeds_log_gradient_stats(small, 0),
        max(args.repeats, 50),
    )
    small_parameters = sum(p.numel() for p in small.parameters())
    name = f"grad_stats vs seeds' loop, {small_parameters / 1e6:.2f}M model"
    rows.append(row(name, ours_time, loop_time, None))

    # Clipping to a huge max_norm multiplies by 1.0: the gradients stay as they are.
    ours_time, torch_time = alternate(
        lambda: vs.optim.clip_grad_norm_(model.parameters(), 1e9),
        lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9),
        args.repeats,
    )
    rows.append(row("clip_grad_norm_ vs torch", ours_time, torch_time, None))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor(),
            "device": args.device, "parameters": parameters, "tensors": tensors, "repeats": args.repeats,
            "width": args.width, "blocks": args.blocks, "vocabulary": args.vocabulary}  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
