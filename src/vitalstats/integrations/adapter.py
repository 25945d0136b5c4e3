"""What the Lightning and Hugging Face callbacks share: a Monitor driven by trainer events.

Trainers call back per *micro-batch* (one forward/backward) and count *optimiser steps*
separately; with gradient accumulation several micro-batches make one step. The adapter
collects the micro-batch losses as device tensors (no host sync) and calls
``mon.step(loss=mean of the step's micro-batch losses)`` once per optimiser step, so the
monitor's statistics are per optimiser step, as in a hand-written loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch


class MonitorAdapter:
    """Owns one ``vs.Monitor`` across a trainer's life cycle.

    ``monitor_kwargs`` go to ``vs.Monitor`` unchanged (``store=``, include/exclude, ...).
    Every rank runs one: under torch.distributed the Monitor merges across ranks and only
    rank 0 writes.
    """

    def __init__(self, **monitor_kwargs: Any):
        self.monitor_kwargs = dict(monitor_kwargs)
        self.monitor: Any = None
        self._pending_losses: list[torch.Tensor] = []
        self._last_optimizer_step: int | None = None
        self._evaluation: contextlib.ExitStack | None = None

    # -- life cycle --------------------------------------------------------------------------
    def start(self, model: torch.nn.Module, optimizer: Any, optimizer_step: int = 0) -> None:
        """Attach a Monitor to ``model`` (and ``optimizer``, may be None) at ``optimizer_step``."""
        import vitalstats as vs

        if self.monitor is not None:
            return  # e.g. Lightning calls on_fit_start once, but be safe on re-entry
        self.monitor = vs.Monitor(
            model, optimizer=unwrap_optimizer(optimizer), **self.monitor_kwargs
        )
        self._last_optimizer_step = optimizer_step
        self._pending_losses.clear()

    def finish(self, crashed: bool = False) -> None:
        """Leave any evaluation phase, then close the Monitor (flushing its store)."""
        if self.monitor is None:
            return
        self.end_evaluation()
        monitor, self.monitor = self.monitor, None
        monitor.close("crashed" if crashed else "finished")

    def sync_optimizer_step(self, optimizer_step: int) -> None:
        """Take the trainer's step counter as the baseline (e.g. after a checkpoint resumed)."""
        self._last_optimizer_step = optimizer_step

    # -- training ----------------------------------------------------------------------------
    def micro_batch_end(self, loss: Any, optimizer_step: int) -> None:
        """After one forward/backward: keep ``loss``; if the trainer's optimiser-step counter
        moved since the last call, the step is complete and the Monitor records it."""
        if self.monitor is None:
            return
        tensor = loss_tensor(loss)
        if tensor is not None:
            self._pending_losses.append(tensor.detach())
        if self._last_optimizer_step is None or optimizer_step != self._last_optimizer_step:
            self._last_optimizer_step = optimizer_step
            self.optimizer_step_end()

    def optimizer_step_end(self) -> None:
        """One optimiser step is complete: record it with the mean of its micro-batch losses."""
        if self.monitor is None:
            return
        losses, self._pending_losses = self._pending_losses, []
        loss = torch.stack([each.float().reshape(()) for each in losses]).mean() if losses else None
        self.monitor.step(loss=loss)

    def add_loss(self, loss: Any) -> None:
        """Keep one micro-batch loss for the next ``optimizer_step_end`` (device tensor kept)."""
        tensor = loss_tensor(loss)
        if self.monitor is not None and tensor is not None:
            self._pending_losses.append(tensor.detach())

    # -- evaluation --------------------------------------------------------------------------
    def begin_evaluation(self) -> None:
        if self.monitor is None or self._evaluation is not None:
            return
        self._evaluation = contextlib.ExitStack()
        self._evaluation.enter_context(self.monitor.evaluating())

    def end_evaluation(self) -> None:
        if self._evaluation is not None:
            stack, self._evaluation = self._evaluation, None
            stack.close()


def loss_tensor(output: Any) -> torch.Tensor | None:
    """The loss in what a training step returned: a tensor, a mapping with ``"loss"`` or an
    object with a ``.loss`` attribute (Hugging Face ``ModelOutput``); None if absent."""
    if isinstance(output, torch.Tensor):
        return output if output.numel() == 1 else None
    if isinstance(output, Mapping):
        return loss_tensor(output.get("loss"))
    loss = getattr(output, "loss", None)
    return loss_tensor(loss) if loss is not None else None


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside a wrapper that keeps it as ``.optimizer`` (accelerate's
    ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``), so the Monitor's step hooks
    and moment reads see the optimizer that really steps; anything else unchanged."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer
