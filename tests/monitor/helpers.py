"""Small models and training loops shared by the monitor tests."""

from __future__ import annotations

import itertools

import torch
from torch import nn

import vitalstats as vs
from vitalstats.monitor import MonitorConfig


def mlp(widths=(8, 16, 16, 4), activation=nn.ReLU, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths[:-1]):  # hidden layers
        layers += [nn.Linear(a, b), activation()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


def batches(n_steps: int, batch: int = 32, features: int = 8, classes: int = 4, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n_steps):
        x = torch.randn(batch, features, generator=generator)
        y = torch.randint(0, classes, (batch,), generator=generator)
        yield x, y


def train(model, optimizer, monitor, data, loss_fn=nn.functional.cross_entropy):
    losses = []
    for x, y in data:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if monitor is not None:
            monitor.step(loss=loss)
        losses.append(loss.detach())
    return losses


def everything(**overrides) -> MonitorConfig:
    return MonitorConfig.everything(**overrides)


def flat(findings) -> list:
    """diagnose()'s story, one finding per line (roots and their consequences)."""
    from vitalstats.monitor.causes import flatten

    return flatten(findings)


def codes(findings) -> set[str]:
    return {f.code for f in flat(findings)}


def run_codes(model, optimizer, steps, config=None, data=None, **monitor_kwargs) -> set[str]:
    monitor = vs.Monitor(
        model, optimizer=optimizer, config=config or MonitorConfig(), **monitor_kwargs
    )
    train(model, optimizer, monitor, data if data is not None else batches(steps))
    found = monitor.diagnose()
    monitor.close()
    return codes(found)
