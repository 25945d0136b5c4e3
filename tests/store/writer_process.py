"""A training-like process that writes a run store; the crash and concurrency tests start it.

    python writer_process.py STORE_PATH --steps N --flush-every K [--layers L] [--no-torch]

Trains a tiny MLP (or, with ``--no-torch``, a torch-free stand-in that starts faster); every
step writes the loss plus L x METRICS scalars whose values are a known function of
(step, layer, metric), and every K steps calls ``flush()`` and then prints
``flushed <step> <loss repr>``: a promise that everything up to that step is on disk. A
background flusher also commits at random moments in between.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import vitalstats as vs

LAYERS = 100
METRICS = 10


def expected_value(step: int, layer: int, metric: int) -> float:
    return step + layer / 1_000 + metric / 1_000_000


def torch_losses() -> Iterator[float]:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    inputs, targets = torch.randn(64, 8), torch.randn(64, 1)
    while True:
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        yield loss.item()


def plain_losses() -> Iterator[float]:
    loss = 1.0
    while True:
        yield loss
        loss *= 0.99


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--flush-every", type=int, required=True)
    parser.add_argument("--layers", type=int, default=LAYERS)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    losses = plain_losses() if args.no_torch else torch_losses()
    store = vs.RunStore(args.path, flush_interval=0.005)
    run = store.start_run("training", config={"lr": 0.05})
    print(f"started {run}", flush=True)
    for step, loss in zip(range(args.steps), losses):
        rows = [
            (f"layer{layer}", f"metric{metric}", expected_value(step, layer, metric))
            for layer in range(args.layers)
            for metric in range(METRICS)
        ]
        store.add_scalars(run, step, [("", "loss", loss), *rows])
        if (step + 1) % args.flush_every == 0:
            store.flush()
            print(f"flushed {step} {loss!r}", flush=True)
    store.end_run(run)
    store.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
