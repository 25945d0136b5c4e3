"""Train one doctor configuration with the Monitor attached; return plain results.

The loop is the ordinary PyTorch one (forward, loss, zero_grad, backward, step) plus
``mon.step(loss=loss)``; the test-set evaluation runs inside ``mon.evaluating()`` with the
model in eval mode. The loss is read back to the host once per epoch, never per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitalstats.doctor.data import Split
from vitalstats.doctor.models import Configuration, build_optimizer

# Called after every optimiser step with (steps done, total steps, last epoch's mean loss or None).
ProgressCallback = Callable[[int, int, float | None], None]


@dataclass(frozen=True)
class RunResult:
    """What one configuration achieved: losses are mean per-example losses (nats)."""

    name: str
    lesson: str
    steps: int
    final_train_loss: float  # mean training loss over the last epoch
    test_loss: float
    test_accuracy: float  # fraction of the test split classified correctly
    seconds: float
    findings: tuple[Any, ...]  # vs.Finding records from mon.diagnose()


def loss_function(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on one logit for (N, 1) float targets, else cross-entropy."""
    if target.dtype.is_floating_point:
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.cross_entropy(logits, target)


def correct_predictions(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions (a 0-d tensor): logit > 0 for binary, argmax otherwise."""
    if target.dtype.is_floating_point:
        return ((logits > 0).to(target.dtype) == target).sum()
    return (logits.argmax(dim=1) == target).sum()


def monitor_config(total_steps: int) -> Any:
    """Denser schedules than the Monitor's defaults: the doctor's models are tiny, so measuring
    everything, histograms included, every 5 steps costs little (and the report's histograms
    over time get one column per 5 steps)."""
    from vitalstats.monitor import MonitorConfig

    every = 5
    return MonitorConfig(
        flush_every=50, activations_every=every, output_grads_every=every, parameters_every=every,
        updates_every=every, optimizer_moments_every=every, norm_layers_every=every,
        histograms_every=every,
    )  # fmt: skip


def _model_summary(model: nn.Module) -> dict[str, Any]:
    return {
        "modules": [
            f"{name}: {module.__class__.__name__}" for name, module in model.named_modules() if name
        ],
        "num_params": sum(p.numel() for p in model.parameters()),
    }


def train_configuration(
    config: Configuration,
    split: Split,
    *,
    store: Any,  # a vs.RunStore (or a path, or None for no store)
    epochs: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> RunResult:
    """Train ``config`` on ``split`` for ``epochs`` (default: the configuration's own)."""
    import vitalstats as vs

    epochs = config.epochs if epochs is None else epochs
    torch.manual_seed(seed)
    model = config.build(split.num_features, split.num_classes).to(device)
    optimizer = build_optimizer(config, model)
    x_train, y_train = split.x_train.to(device), split.y_train.to(device)
    x_test, y_test = split.x_test.to(device), split.y_test.to(device)
    # Full batches only: a short last batch (455 % 32 = 7 rows) would give BatchNorm too few
    # values per channel, which is a finding of its own rather than the lesson here.
    batches_per_epoch = len(x_train) // config.batch_size
    examples_per_epoch = batches_per_epoch * config.batch_size
    total_steps = epochs * batches_per_epoch
    generator = torch.Generator().manual_seed(seed)
    run_config = {
        "doctor_configuration": config.name,
        "description": config.lesson,
        "dataset": config.dataset,
        "optimizer": {"name": config.optimizer, "lr": config.lr},
        "batch_size": config.batch_size,
        "epochs": epochs,
        "seed": seed,
        "device": device,
        "model": _model_summary(model),
    }
    started = time.perf_counter()
    epoch_loss: float | None = None
    steps = 0
    monitor = vs.Monitor(
        model, optimizer=optimizer, store=store, config=monitor_config(total_steps),
        run_name=config.name, run_config=run_config,
    )  # fmt: skip
    run_name = store.runs()[-1].name if hasattr(store, "runs") else config.name
    with monitor:
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(x_train), generator=generator).to(device)
            loss_sum = torch.zeros((), device=device)
            for start in range(0, examples_per_epoch, config.batch_size):
                index = order[start : start + config.batch_size]
                loss = loss_function(model(x_train[index]), y_train[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                monitor.step(loss=loss)
                loss_sum += loss.detach() * len(index)
                steps += 1
                if progress is not None:
                    progress(steps, total_steps, epoch_loss)
            epoch_loss = float(loss_sum / examples_per_epoch)  # one host sync per epoch
        model.eval()
        with monitor.evaluating() as phase, torch.no_grad():
            logits = model(x_test)
            test_loss_tensor = loss_function(logits, y_test)
            phase.add_loss(test_loss_tensor)
            test_loss = float(test_loss_tensor)
            accuracy = float(correct_predictions(logits, y_test)) / len(x_test)
        findings = tuple(monitor.diagnose())
    if progress is not None:
        progress(steps, total_steps, epoch_loss)
    return RunResult(
        name=run_name,
        lesson=config.lesson,
        steps=steps,
        final_train_loss=float("nan") if epoch_loss is None else epoch_loss,
        test_loss=test_loss,
        test_accuracy=accuracy,
        seconds=time.perf_counter() - started,
        findings=findings,
    )
