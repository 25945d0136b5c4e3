"""``vs.Monitor``: hooks a model and optimiser, measures every optimiser step, diagnoses.

    mon = vs.Monitor(model, optimizer=opt, store="runs/exp1.sqlite")
    for x, y in loader:
        loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
        mon.step(loss=loss)            # no host sync: statistics stay on the device
    findings = mon.diagnose()
    mon.close()

Data flow: hooks (``hooks``) -> probes (``probes``, ``parameters``, ``norm_layers``) put device
tensors into a ``StepAccumulator`` -> every ``flush_every`` steps one batched copy
(``recorder.gather``, merged across ranks) -> named metrics (``metrics``) -> ``diagnoses`` ->
the run store (rank 0 only). Gradient accumulation: every forward/backward between two
``step()`` calls belongs to one optimiser step; activation statistics pool all its
micro-batches and gradients are read once, just before ``optimizer.step()``.
"""

from __future__ import annotations

import collections
import contextlib
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitalstats.monitor import linting
from vitalstats.monitor.config import MonitorConfig, due
from vitalstats.monitor.diagnoses import Diagnoser
from vitalstats.monitor.findings import Finding, FindingLog, make_finding
from vitalstats.monitor.hooks import HookMixin, _Due
from vitalstats.monitor.metrics import StepMetrics, derive
from vitalstats.monitor.norm_layers import is_batchnorm, running_nonfinite_flags
from vitalstats.monitor.parameters import ParameterProbe
from vitalstats.monitor.probes import layer_kind
from vitalstats.monitor.recorder import StepAccumulator, StepRecord, gather
from vitalstats.monitor.selection import (
    COMPILED_WARNING,
    Patterns,
    module_depth,
    select_layers,
    select_parameters,
    unwrap,
)
from vitalstats.monitor.store_writer import StoreWriter
from vitalstats.monitor.tensorboard_sink import TensorBoardSink


class EvaluationPhase:
    """Handle yielded by ``Monitor.evaluating()``; ``add_loss`` feeds run-level ``eval_loss``
    (the mean of the losses added, weighted by ``count``)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | float = 0.0
        self.count = 0.0

    def add_loss(self, loss: torch.Tensor | float, count: float = 1.0) -> None:
        value = loss.detach().double() if isinstance(loss, torch.Tensor) else float(loss)
        self.total = self.total + value * count
        self.count += count


class Monitor(HookMixin):
    """Per-layer training statistics and diagnoses for any ``nn.Module``.

    ``include``/``exclude``: glob patterns on qualified module names (``"encoder.*"``) for the
    layers and their parameters; ``types``: only these module classes; ``config``: schedules
    and thresholds (``MonitorConfig``); ``store``: a path or ``vs.RunStore`` (rank 0 writes);
    ``run_name``/``run_config``: recorded with the run; ``tensorboard``: a directory that
    also receives every flushed window as TensorBoard scalars and histograms. Works on DDP-wrapped models; a model
    already compiled with ``torch.compile`` gets one warning (attach before compiling).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        store: str | Path | Any | None = None,
        *,
        config: MonitorConfig | None = None,
        include: Patterns = None,
        exclude: Patterns = None,
        types: Sequence[type[nn.Module]] | None = None,
        run_name: str | None = None,
        run_config: dict[str, Any] | None = None,
        tensorboard: str | Path | None = None,
        _lint: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"vs.Monitor: model must be a torch.nn.Module, got {type(model)}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"vs.Monitor: optimizer must be a torch.optim.Optimizer, got {type(optimizer)}"
            )
        self.config = config if config is not None else MonitorConfig()
        self.model, self.optimizer = model, optimizer
        self.inner, self.compiled = unwrap(model)
        if self.compiled:
            warnings.warn(COMPILED_WARNING, UserWarning, stacklevel=2)
        self.layers = select_layers(self.inner, include, exclude, types)
        self.parameters = ParameterProbe(select_parameters(self.inner, include, exclude))
        self._lint = _lint
        self._kinds = {name: layer_kind(m) for name, m in self.layers}
        self._batchnorms = [(n, m) for n, m in self.layers if is_batchnorm(m)]
        self._bn_eps = {n: float(m.eps) for n, m in self._batchnorms}
        self._acc = StepAccumulator()
        self._records: list[StepRecord] = []
        self.findings = FindingLog()
        self._diagnoser = Diagnoser(
            self.config.thresholds, self.config.loss_ewm_beta, self.findings
        )
        self._diagnoser.weighted_layers = {n for n, k in self._kinds.items() if k == "weighted"}
        self._diagnoser.matrix_parameters = {n for n, p in self.parameters.named if p.dim() >= 2}
        self._diagnoser.parameter_order = [n for n, _ in self.parameters.named]
        self.history: collections.deque[StepMetrics] = collections.deque(
            maxlen=self.config.history_steps
        )
        self.step_index = 0
        self._due = self._schedule(0)
        self._evaluating = False
        self._previous_is_linear = False
        self._biased_output: tuple[str, torch.Tensor] | None = None
        self._seen_layers: set[str] = set()
        self._last_time: float | None = None
        self._handles: list[Any] = []
        self._gradients_after_step = False  # optimizer.step(closure): read grads after it
        self._writer = None if _lint else StoreWriter.open(store, run_name, run_config, self)
        self._tensorboard = None if _lint else TensorBoardSink.open(tensorboard, self.config)
        if not _lint:
            for finding in linting.static_findings(self.inner):
                self.findings.add(finding)
        self.attach()

    # ----------------------------------------------------------------------------- steps
    def _schedule(self, step: int) -> _Due:
        c = self.config
        return _Due(
            nonfinite=due(c.nonfinite_every, step),
            grad_norm=due(c.grad_norm_every, step),
            activations=due(c.activations_every, step),
            output_grads=due(c.output_grads_every, step),
            parameters=due(c.parameters_every, step),
            updates=due(c.updates_every, step),
            optimizer_moments=due(c.optimizer_moments_every, step),
            norm_layers=due(c.norm_layers_every, step),
            histograms=due(c.histograms_every, step),
        )

    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Close the current optimiser step (call once per ``optimizer.step()``, after it).

        ``loss``: the step's loss (a tensor stays on the device; no host sync here)."""
        acc = self._acc
        if self.optimizer is None:  # no optimizer hooks: read gradients now
            d = self._due
            if d.updates and self.parameters.has_snapshot:
                self.parameters.updates(acc)
            self._measure_parameters_before(snapshot=False)
        if loss is not None:
            if isinstance(loss, torch.Tensor):
                value = loss.detach()
                value = value.mean() if value.dim() else value
                acc.add("", "loss_device", value, "mean")
            else:
                acc.add_host("", "loss", float(loss))
        if self.optimizer is not None:
            lr = self.optimizer.param_groups[0].get("lr")
            if isinstance(lr, torch.Tensor):
                acc.add("", "lr_device", lr.detach().float().reshape(()), "same")
            elif lr is not None:
                acc.add_host("", "lr", float(lr))
        now = time.perf_counter()
        if self._last_time is not None and now > self._last_time:
            acc.add_host("", "steps_per_second", 1.0 / (now - self._last_time))
        self._last_time = now
        record = acc.close(self.step_index)
        if record is not None:
            self._records.append(record)
        self.step_index += 1
        self._due = self._schedule(self.step_index)
        if self.optimizer is None and self._due.updates:
            self.parameters.snapshot()
        if self.step_index % self.config.flush_every == 0:
            self.flush()

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[EvaluationPhase]:
        """Mark a validation phase: nothing is measured inside, BatchNorm misuse is checked,
        and losses given to ``phase.add_loss(loss)`` become run-level ``eval_loss``."""
        phase = EvaluationPhase()
        previous, self._evaluating = self._evaluating, True
        try:
            yield phase
        finally:
            self._evaluating = previous
        if phase.count:  # recorded at the last finished optimiser step
            mean, extra = phase.total / phase.count, StepAccumulator()
            if isinstance(mean, torch.Tensor):
                extra.add("", "eval_loss_device", mean.reshape(()), "mean")
            else:
                extra.add_host("", "eval_loss", mean)
            self._records.append(extra.close(max(self.step_index - 1, 0)))

    # ----------------------------------------------------------------------------- flushing
    def flush(self) -> list[StepMetrics]:
        """Copy the pending steps to the host (one transfer), diagnose them and write them to
        the store. Returns their metrics."""
        if self._batchnorms and self.step_index > 0:
            check = StepAccumulator()
            for name, flag in running_nonfinite_flags(self._batchnorms):
                check.add(name, "bn_running_nonfinite", flag, "max")
            record = check.close(self.step_index - 1)
            if record is not None:
                self._records.append(record)
        records, self._records = self._records, []
        window = _merge_by_step(
            [derive(values, self.parameters.numel, self._bn_eps) for values in gather(records)]
        )
        for metrics in window:
            self._diagnoser.observe(metrics)
        self._diagnoser.observe_window(window)
        self._check_buffer_divergence()
        self.history.extend(window)
        if self._writer is not None:
            self._writer.write(window, self.findings.take_unsaved())
        if self._tensorboard is not None:
            self._tensorboard.write(window)
        return window

    def _check_buffer_divergence(self) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        if not self._batchnorms:
            return
        try:
            from vitalstats.nn import check_buffer_divergence
        except ImportError:  # older vitalstats.nn without the check
            return
        limit = self.config.thresholds.bn_buffer_divergence
        for name, spread in check_buffer_divergence(self.inner).items():
            if spread > limit:
                self.findings.add(
                    make_finding(
                        "BN_BUFFER_DIVERGENCE",
                        name,
                        self.step_index - 1,
                        f"running statistics differ across ranks by {spread:.3g} (max of mean "
                        f"spread in running stds and log variance ratio; threshold {limit}).",
                        "keep DDP's broadcast_buffers=True, use SyncBatchNorm, or all-reduce the "
                        "buffers (vs.nn) before evaluating or saving.",
                    )
                )

    def diagnose(self) -> list[Finding]:
        """Flush, then every finding so far (first occurrence per code and layer)."""
        self.flush()
        return self.findings.all()

    def report(self, path: str | Path) -> Path | None:
        """Write the HTML report of this run (needs a store).

        Under torch.distributed this flushes (a collective), so call it on every rank: rank 0
        writes the report and returns its path, the other ranks return None."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            self.flush()
            return None
        if self._writer is None or self._writer.store is None:
            raise RuntimeError(
                "Monitor.report: this monitor has no run store; create it with "
                "vs.Monitor(model, optimizer=opt, store='runs/exp.sqlite') to make reports"
            )
        self.flush()
        self._writer.store.flush()
        from vitalstats.report import write_report

        return write_report(self._writer.path, path, run=self._writer.run_id)

    def close(self, status: str = "finished") -> None:
        """Flush, end the run in the store, remove the hooks."""
        try:
            if self._records or self._acc._values:
                self.flush()
            if self._writer is not None:
                self._writer.close(status)
                self._writer = None
        finally:
            if self._tensorboard is not None:
                self._tensorboard.close()
                self._tensorboard = None
            self.detach()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("finished")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self.close("crashed")

    def __repr__(self) -> str:
        return (
            f"Monitor({type(self.inner).__name__}, layers={len(self.layers)}, "
            f"parameters={len(self.parameters.named)}, step={self.step_index}, "
            f"attached={self.attached})"
        )

    def layer_infos(self) -> list[tuple[str, str, int, int]]:
        """(name, type, depth, own parameter count) of every watched layer."""
        return [
            (
                name,
                type(m).__name__,
                module_depth(name),
                sum(p.numel() for p in m.parameters(recurse=False)),
            )
            for name, m in self.layers
        ]


def _merge_by_step(window: list[StepMetrics]) -> list[StepMetrics]:
    """One ``StepMetrics`` per step (flush-time checks and evaluation phases add records)."""
    merged: dict[int, StepMetrics] = {}
    for metrics in window:
        into = merged.setdefault(metrics.step, StepMetrics(metrics.step))
        into.scalars.update(metrics.scalars)
        into.histograms.update(metrics.histograms)
        into.flags.update(metrics.flags)
    return sorted(merged.values(), key=lambda m: m.step)
