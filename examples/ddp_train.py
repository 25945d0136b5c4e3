"""Data-parallel training of a small CNN with vitalstats' SyncBatchNorm on scikit-learn's
bundled digits (8x8 images, 10 classes). Runs on CPU (gloo) or one GPU per process (NCCL):

    torchrun --nproc_per_node=2 examples/ddp_train.py
    torchrun --nproc_per_node=2 examples/ddp_train.py --steps 20 --batch-size 16

Each rank sees its own shard of every batch; SyncBatchNorm normalises with the statistics of
the whole global batch, so the result does not depend on how many ranks share it. DDP runs
without its buffer broadcast (``broadcast_buffers=False``, called ``forward_sync_buffers=False``
since torch 2.13): the running statistics still agree on every rank because each
SyncBatchNorm updates them from the same merged statistics, which the buffer-divergence check
at the end confirms.
"""

from __future__ import annotations

import argparse
import inspect
import os
import time

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import vitalstats as vs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps (default 400)")
    parser.add_argument("--batch-size", type=int, default=32, help="per rank (default 32)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50, help="steps between log lines")
    parser.add_argument(
        "--backend", choices=["auto", "gloo", "nccl"], default="auto", help="auto: nccl on GPU"
    )
    return parser.parse_args()


def digits(seed: int) -> tuple[TensorDataset, TensorDataset]:
    """(train, test): 1500 and 297 images of shape (1, 8, 8) scaled to [0, 1]."""
    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(labels, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:1500], order[1500:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def small_cnn() -> torch.nn.Module:
    """conv-BN-ReLU twice, global average pool, linear. Convolutions before BatchNorm need no
    bias: the BatchNorm mean subtraction would cancel it."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1, bias=False),  # (N, 16, 8, 8)
        vs.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2, bias=False),  # (N, 32, 4, 4)
        vs.nn.BatchNorm2d(32),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    )


def no_buffer_broadcast() -> dict[str, bool]:
    """DDP's switch that stops copying rank 0's buffers at every forward (renamed in 2.13)."""
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: TensorDataset, device: torch.device) -> float:
    model.eval()
    x, y = (t.to(device) for t in data.tensors)
    correct = (model(x).argmax(dim=1) == y).float().mean().item()
    model.train()
    return correct


def main() -> None:
    args = parse_args()
    use_cuda = args.backend == "nccl" or (args.backend == "auto" and torch.cuda.is_available())
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)  # the same initial weights on every rank

    train, test = digits(args.seed)
    sampler = DistributedSampler(train, shuffle=True, seed=args.seed, drop_last=True)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    # On gloo, timeout= makes a rank whose peer skipped a step fail within 60 s, naming the layer.
    # Under NCCL a timeout would make every collective block the CPU until the GPU has finished
    # it, so there the process group's own timeout (init_process_group(timeout=...)) applies.
    timeout = None if use_cuda else 60.0
    model = vs.nn.convert_sync_batchnorm(small_cnn(), timeout=timeout).to(device)
    ddp = DistributedDataParallel(model, **no_buffer_broadcast())
    optimizer = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)

    if rank == 0:
        print(
            f"{world_size} ranks ({'nccl' if use_cuda else 'gloo'}), global batch "
            f"{args.batch_size * world_size}, {args.steps} steps"
        )
    step, epoch, start = 0, 0, time.perf_counter()
    while step < args.steps:
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(ddp(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % args.log_every == 0 or step == args.steps:
                mean_loss = loss.detach().clone()
                dist.all_reduce(mean_loss)
                if rank == 0:
                    elapsed = time.perf_counter() - start
                    print(
                        f"step {step:4d}  loss {mean_loss.item() / world_size:.4f}  {elapsed:.1f} s"
                    )
            if step == args.steps:
                break
        epoch += 1

    divergence = vs.nn.check_buffer_divergence(model)  # a collective: every rank calls it
    test_accuracy = accuracy(model, test, device)
    if rank == 0:
        print(f"test accuracy {test_accuracy:.3f}")
        print(f"largest buffer divergence across ranks {max(divergence.values()):.3g}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
