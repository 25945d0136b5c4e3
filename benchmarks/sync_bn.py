"""Per-step time of 2-rank DDP training with vitalstats' SyncBatchNorm against the same model
with local BatchNorm (torch's and vitalstats'), gloo on the CPU. Target: sync / local <= 1.3.

    python benchmarks/sync_bn.py                        # JSON to benchmarks/results/sync_bn.json
    python benchmarks/sync_bn.py --rounds 3 --steps 5   # quick smoke run

A step is forward, backward (DDP all-reduces the gradients) and an SGD update of a
conv-BN-ReLU network on random data. The variants run interleaved in ``--rounds`` rounds of
``--steps`` steps each (after a warm-up), so a load spike hits all of them alike; the figure is
the median over rounds of rank 0's mean step time. With ``--backend nccl`` (needs one GPU per
rank) the same runs on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import vitalstats as vs

VARIANTS = ("ddp_torch_batchnorm", "ddp_vitalstats_batchnorm", "ddp_vitalstats_syncbatchnorm")


def network(channels: int, blocks: int, variant: str) -> torch.nn.Module:
    """``blocks`` x (3x3 conv, BatchNorm, ReLU), global pool, linear to 10 classes."""
    norm = torch.nn.BatchNorm2d if variant == "ddp_torch_batchnorm" else vs.nn.BatchNorm2d
    layers: list[torch.nn.Module] = [torch.nn.Conv2d(3, channels, 3, padding=1, bias=False)]
    for block in range(blocks):
        if block:
            layers.append(torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False))
        layers += [norm(channels), torch.nn.ReLU()]
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels, 10)]
    model = torch.nn.Sequential(*layers)
    if variant == "ddp_vitalstats_syncbatchnorm":
        model = vs.nn.convert_sync_batchnorm(model)
    return model


def _rank(rank: int, world_size: int, init_file: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group(
        args.backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    device = torch.device("cpu")
    if args.backend == "nccl":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    torch.manual_seed(rank)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    x = torch.randn(shape, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    runs = {}
    for variant in VARIANTS:
        torch.manual_seed(0)
        model = DistributedDataParallel(network(args.channels, args.blocks, variant).to(device))
        runs[variant] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))

    def steps(variant: str, count: int) -> float:
        model, optimizer = runs[variant]
        dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(count):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / count

    for variant in VARIANTS:
        steps(variant, args.warmup)
    per_round = {variant: [] for variant in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            per_round[variant].append(steps(variant, args.steps))
    if rank == 0:
        Path(out).write_text(json.dumps(per_round))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=4, help="conv-BN-ReLU blocks")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="steps per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sync_bn.json"))
    args = parser.parse_args()
    world_size = 2
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with tempfile.TemporaryDirectory(prefix="vs-bench-") as tmp:
        out = os.path.join(tmp, "rank0.json")
        mp.spawn(_rank, args=(world_size, os.path.join(tmp, "init"), args, out), nprocs=world_size)
        per_round = json.loads(Path(out).read_text())
    per_step_ms = {v: 1e3 * statistics.median(times) for v, times in per_round.items()}
    sync = per_step_ms["ddp_vitalstats_syncbatchnorm"]
    result = {
        "benchmark": "sync_bn",
        "world_size": world_size,
        "backend": args.backend,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor()} ({os.cpu_count()} CPUs)",
        "per_step_ms": per_step_ms,
        "ratio_sync_to_torch_local": sync / per_step_ms["ddp_torch_batchnorm"],
        "ratio_sync_to_vitalstats_local": sync / per_step_ms["ddp_vitalstats_batchnorm"],
        "target_ratio": 1.3,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for variant, ms in per_step_ms.items():
        print(f"{variant:32s} {ms:8.2f} ms/step")
    print(
        f"SyncBatchNorm / local torch BatchNorm {result['ratio_sync_to_torch_local']:.2f}x, "
        f"/ local vitalstats BatchNorm {result['ratio_sync_to_vitalstats_local']:.2f}x "
        f"(target <= 1.3x); written to {args.out}"
    )


if __name__ == "__main__":
    main()
