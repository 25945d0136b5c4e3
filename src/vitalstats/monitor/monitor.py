"""``vs.Monitor``: hooks a model and optimiser, measures every optimiser step, diagnoses.

    mon = vs.Monitor(model, optimizer=opt, store="runs/exp1.sqlite")
    for x, y in loader:
        loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
        mon.step(loss=loss)            # no host sync: statistics stay on the device
    findings = mon.diagnose()
    mon.close()

Data flow, one way: hooks (``hooks``, given an explicit ``MeasureState``) -> probes
(``probes``, ``parameters``, ``norm_layers``) put device tensors into the step accumulator
-> every ``flush_every`` steps one batched copy (``recorder.gather``, merged across ranks
and shards) -> the registry's named metrics (``metrics``) -> ``diagnoses`` (the only place
findings are made) -> the sinks (run store, TensorBoard; rank 0 only). Gradient
accumulation: every forward/backward between two ``step()`` calls belongs to one optimiser
step; activation statistics pool all its micro-batches and gradients are read once, just
before ``optimizer.step()``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitalstats.monitor import linting
from vitalstats.monitor import registry as r
from vitalstats.monitor.causes import story
from vitalstats.monitor.config import MonitorConfig
from vitalstats.monitor.diagnoses import Diagnoser, RunContext, optimizer_family, parameter_role
from vitalstats.monitor.findings import CODES, Finding, FindingLog, TrainingStopped
from vitalstats.monitor.hooks import Hooks
from vitalstats.monitor.metrics import DEVICE_SUFFIX, StepMetrics, derive
from vitalstats.monitor.norm_layers import BN_RUNNING_NONFINITE, is_batchnorm
from vitalstats.monitor.norm_layers import running_nonfinite_flags as bn_running_nonfinite
from vitalstats.monitor.parameters import ParameterProbe
from vitalstats.monitor.probes import is_embedding, layer_kind, probabilities_fed_to_logit_loss
from vitalstats.monitor.recorder import StepAccumulator, StepRecord, gather
from vitalstats.monitor.selection import (
    Patterns,
    module_depth,
    select_layers,
    select_parameters,
    unwrap,
)
from vitalstats.monitor.sinks import StoreSink, TensorBoardSink
from vitalstats.monitor.state import MeasureState

STALE_GRAPH_WARNING = (
    "vs.Monitor: this model was compiled with torch.compile and its graph was built before "
    "the monitor attached, so torch ignores the monitor's forward hooks: activation, "
    "output-gradient and BatchNorm statistics are missing (loss, gradient, weight, update "
    "and optimizer statistics still work). Attach before the first forward of the compiled "
    "model (`mon = vs.Monitor(model, optimizer=opt); model = torch.compile(model)`), or call "
    "torch._dynamo.reset() after attaching so the graph is rebuilt with the hooks."
)


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


class Monitor:
    """Per-layer training statistics and diagnoses for any ``nn.Module``.

    ``include``/``exclude``: glob patterns on qualified module names (``"encoder.*"``) for the
    layers and their parameters; ``types``: only these module classes; ``config``: schedules
    and thresholds (``MonitorConfig``); ``store``: a path or ``vs.RunStore`` (rank 0 writes);
    ``run_name``/``run_config``: recorded with the run; ``tensorboard``: a directory that
    also receives every flushed window as TensorBoard scalars and histograms; ``scaler``: a
    ``torch.amp.GradScaler`` whose scale is recorded (skipped steps are recorded either way).
    Works on DDP- and FSDP2-wrapped models and on models compiled after attaching.

    Findings are announced when found (at each flush): one record each on the ``vitalstats``
    logger (info/warning/error levels) and ``on_finding(finding)`` if given. ``stop_on``
    (``"error"`` for any error, or a collection of codes) makes ``step()`` raise
    ``TrainingStopped`` on the first matching finding; it also checks the loss for NaN/Inf on
    every step (one host read of the loss per step, the price of stopping at once).
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
        scaler: Any = None,
        on_finding: Callable[[Finding], Any] | None = None,
        stop_on: str | Collection[str] | None = None,
        _lint: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"vs.Monitor: model must be a torch.nn.Module, got {type(model)}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"vs.Monitor: optimizer must be a torch.optim.Optimizer, got {type(optimizer)}"
            )
        self.config = config if config is not None else MonitorConfig()
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self._on_finding = on_finding
        self._stop_on = _stop_codes(stop_on)
        self._stopping: list[Finding] = []
        self.inner, self.compiled = unwrap(model)
        self.layers = select_layers(self.inner, include, exclude, types)
        self.parameters = ParameterProbe(
            select_parameters(self.inner, include, exclude), self.config.kernels
        )
        kinds = {name: layer_kind(m) for name, m in self.layers}
        self.state = MeasureState(self.config, kinds, lint=_lint)
        self._batchnorms = [(n, m) for n, m in self.layers if is_batchnorm(m)]
        self._bn_eps = {n: float(m.eps) for n, m in self._batchnorms}
        self._records: list[StepRecord] = []
        self.findings = FindingLog()
        self._diagnoser = Diagnoser(self.config, self.findings, self._context())
        self.history: collections.deque[StepMetrics] = collections.deque(
            maxlen=self.config.history_steps
        )
        self.step_index = 0
        self.state.due.update(self.config, 0)
        self._last_time: float | None = None
        self._warned_stale_graph = False
        self._warned_degraded: set[str] = set()
        self._failed_parts: set[str] = set()  # flush parts that failed (warned once)
        self._hooks = Hooks(self.state, self.inner, self.layers, self.parameters, optimizer)
        self._store = None if _lint else StoreSink.open(store, run_name, run_config, self)
        self._tensorboard = None if _lint else TensorBoardSink.open(tensorboard, self.config)
        if not _lint:
            for finding in linting.static_findings(self.inner):
                self.findings.add(finding)
        self.attach()

    def _context(self) -> RunContext:
        modules = dict(self.inner.named_modules())
        roles = {}
        for name, p in self.parameters.named:
            module = modules.get(name.rpartition(".")[0], self.inner)
            roles[name] = parameter_role(module, name, p.dim())
        return RunContext(
            thresholds=self.config.thresholds,
            log=self.findings,
            parameter_roles=roles,
            parameter_order=[n for n, _ in self.parameters.named],
            weighted_layers={
                n
                for n, m in self.layers
                if self.state.kinds[n] == "weighted" and not is_embedding(m)
            },
            embedding_layers={n for n, m in self.layers if is_embedding(m)},
            forward_order=self.state.forward_order,
            links=self.state.links,
            optimizer_family=optimizer_family(self.optimizer),
        )

    # ----------------------------------------------------------------------------- hooks
    def attach(self) -> Monitor:
        """Register every hook (idempotent); returns self."""
        self._hooks.attach()
        return self

    def detach(self) -> Monitor:
        """Remove every hook: the model and optimiser behave exactly as before."""
        self._hooks.detach()
        return self

    @property
    def attached(self) -> bool:
        return self._hooks.attached

    # ----------------------------------------------------------------------------- steps
    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Close the current optimiser step (call once per ``optimizer.step()``, after it).

        ``loss``: the step's loss (a tensor stays on the device; no host sync here)."""
        s, acc = self.state, self.state.acc
        self._hooks.step_depth = 0  # a step that raised never ran its post-hook
        if self.optimizer is None:  # no optimizer hooks: read gradients now
            if s.due.updates and self.parameters.has_snapshot:
                self.parameters.updates(acc)
            self._hooks.measure_before_step(snapshot=False)
            self._hooks.mark_gradients_used()
        stepped = s.optimizer_stepped or self.optimizer is None
        if stepped and s.eval_mode_layers:
            s.observe("step_in_eval_mode", "", layers=list(s.eval_mode_layers))
        if isinstance(loss, torch.Tensor) and s.due.activations and loss.grad_fn is not None:
            pattern = probabilities_fed_to_logit_loss(loss)  # Python graph walk, no tensor read
            if pattern is not None:
                s.observe("probabilities_to_logit_loss", "", loss=pattern[0], activation=pattern[1])
        urgent = False
        if loss is not None:
            if isinstance(loss, torch.Tensor):
                value = loss.detach()
                value = value.float().mean() if value.dim() else value
                acc.add("", r.LOSS + DEVICE_SUFFIX, value, "mean")
                if self._stop_on is not None:  # opt-in: one host read per step
                    urgent = not bool(torch.isfinite(value))
            else:
                acc.add_host("", r.LOSS, float(loss))
                urgent = self._stop_on is not None and not math.isfinite(float(loss))
        self._record_optimizer_state()
        now = time.perf_counter()
        if self._last_time is not None and now > self._last_time:
            acc.add_host("", r.STEPS_PER_SECOND, 1.0 / (now - self._last_time))
        self._last_time = now
        self._hooks.bin_activation_histograms()
        self._check_compiled_graph()
        self._warn_degraded()
        record = acc.close(self.step_index)
        if record is not None:
            self._records.append(record)
        s.end_step()
        self.step_index += 1
        s.step = self.step_index
        s.due.update(self.config, self.step_index)
        s.optimizer_stepped = False
        if self.optimizer is None and s.due.updates:
            self.parameters.snapshot()
        if self.step_index % self.config.flush_every == 0 or urgent:
            self.flush()
        if self._stopping:
            stopping, self._stopping = self._stopping, []
            raise TrainingStopped(stopping)

    def _record_optimizer_state(self) -> None:
        acc, optimizer = self.state.acc, self.optimizer
        if optimizer is None:
            return
        acc.add_host("", r.STEP_SKIPPED, 0.0 if self.state.optimizer_stepped else 1.0)
        lr = optimizer.param_groups[0].get("lr")
        if isinstance(lr, torch.Tensor):
            acc.add("", r.LR + DEVICE_SUFFIX, lr.detach().double().reshape(()), "same")
        elif lr is not None:
            acc.add_host("", r.LR, float(lr))
        scaler = self.scaler
        if scaler is not None and getattr(scaler, "is_enabled", lambda: False)():
            scale = getattr(scaler, "_scale", None)  # a device tensor: reading it would sync
            if isinstance(scale, torch.Tensor):
                acc.add(
                    "", r.AMP_SCALE + DEVICE_SUFFIX, scale.detach().double().reshape(()), "same"
                )

    def _check_compiled_graph(self) -> None:
        s = self.state
        if not self.compiled or self._warned_stale_graph or not s.due.forward or s.lint:
            return
        if (s.optimizer_stepped or self.optimizer is None) and not s.seen_layers:
            warnings.warn(STALE_GRAPH_WARNING, UserWarning, stacklevel=3)
            self._warned_stale_graph = True

    def _warn_degraded(self) -> None:
        for what, why in self.state.degraded.items():
            if what not in self._warned_degraded:
                self._warned_degraded.add(what)
                warnings.warn(
                    f"vs.Monitor: {what} is not measured in this run: {why}.",
                    UserWarning,
                    stacklevel=3,
                )

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[EvaluationPhase]:
        """Mark a validation phase: nothing is measured inside, BatchNorm misuse is checked,
        and losses given to ``phase.add_loss(loss)`` become run-level ``eval_loss``."""
        phase = EvaluationPhase()
        previous, self.state.evaluating = self.state.evaluating, True
        try:
            yield phase
        finally:
            self.state.evaluating = previous
        if phase.count:  # recorded at the last finished optimiser step
            mean, extra = phase.total / phase.count, StepAccumulator()
            if isinstance(mean, torch.Tensor):
                extra.add("", r.EVAL_LOSS + DEVICE_SUFFIX, mean.reshape(()), "mean")
            else:
                extra.add_host("", r.EVAL_LOSS, mean)
            self._records.append(extra.close(max(self.step_index - 1, 0)))

    # ----------------------------------------------------------------------------- flushing
    def flush(self) -> list[StepMetrics]:
        """Copy the pending steps to the host (one transfer), diagnose them and write them to
        the sinks. Returns their metrics. A collective under torch.distributed."""
        if self._batchnorms and self.step_index > 0:
            check = StepAccumulator()
            for name, flag in bn_running_nonfinite(self._batchnorms):
                check.add(name, BN_RUNNING_NONFINITE, flag, "max")
            record = check.close(self.step_index - 1)
            if record is not None:
                self._records.append(record)
        records, self._records = self._records, []
        window = _merge_by_step([derive(values, self._bn_eps) for values in gather(records)])
        spreads = self._buffer_spreads()  # a collective: every rank, whatever follows
        self._guarded("diagnosis", lambda: self._diagnose(window, spreads))
        self.history.extend(window)
        self._write_sinks(window)
        self._announce(self.findings.take_new())
        return window

    def _diagnose(self, window: list[StepMetrics], spreads: dict[str, float]) -> None:
        self._diagnoser.observations(self.state.take_observations())
        for metrics in window:
            self._diagnoser.observe(metrics)
        self._diagnoser.observe_window(window)
        if spreads:
            self._diagnoser.buffer_divergence(spreads, self.step_index - 1)

    def _write_sinks(self, window: list[StepMetrics]) -> None:
        """Write the window to the run store and TensorBoard (``_guarded``)."""
        store, tensorboard = self._store, self._tensorboard
        if store is not None:
            self._guarded("run store", lambda: store.write(window, self.findings.take_unsaved()))
        if tensorboard is not None:
            self._guarded("TensorBoard", lambda: tensorboard.write(window))

    def _guarded(self, part: str, run: Callable[[], None]) -> None:
        """Run one part of a flush (the diagnosis, a sink's write). One that fails (a full
        disk, a locked file, a broken writer, a diagnosis rule meeting data it did not
        expect) warns once and never stops the training step: the statistics are still
        recorded, and the run store keeps the rows it could not commit and retries them at
        the next flush."""
        try:
            run()
        except Exception as error:  # the monitor is a guest: training goes on
            if part in self._failed_parts:
                return
            self._failed_parts.add(part)
            if part == "diagnosis":
                what = "diagnosing the flushed steps failed"
                after = (
                    "the statistics are still recorded and stored (a vitalstats bug: please "
                    "report it)"
                )
            else:
                what = f"the {part} could not be written"
                after = (
                    "the monitor keeps its history, and the run store keeps unwritten rows and "
                    "retries them at each flush"
                )
            warnings.warn(
                f"vs.Monitor: {what} ({type(error).__name__}: {error}); training continues: "
                f"{after} (warned once)",
                UserWarning,
                stacklevel=5,
            )

    def _announce(self, new: list[Finding]) -> None:
        """Each new finding: a log record, the user's callback, and the stop check."""
        for finding in new:
            _LOG.log(_LEVELS.get(finding.severity, logging.WARNING), "%s", finding)
            if self._on_finding is not None:
                self._on_finding(finding)
            stop = self._stop_on
            if stop is not None and (
                finding.code in stop or ("error" in stop and finding.severity == "error")
            ):
                self._stopping.append(finding)

    def _buffer_spreads(self) -> dict[str, float]:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return {}
        if not self._batchnorms:
            return {}
        from vitalstats.nn import check_buffer_divergence

        return dict(check_buffer_divergence(self.inner))

    def diagnose(self) -> list[Finding]:
        """Flush, then the run's story: root causes first, each with the findings it
        explains attached (``Finding.consequences``), one finding per code listing every
        layer it was seen on (``Finding.layers``). ``monitor.findings.all()`` has the raw
        ones (first occurrence per code and layer)."""
        self.flush()
        return story(self.findings.all())

    @property
    def store_path(self) -> Path | None:
        """The run store's file (None without a store, and on ranks other than 0)."""
        return None if self._store is None else self._store.path

    @property
    def run_id(self) -> int | None:
        return None if self._store is None else self._store.run_id

    def sync_store(self) -> None:
        """Wait until every flushed row is committed to the store (readers then see it)."""
        if self._store is not None:
            self._store.store.flush()

    def close(self, status: str = "finished") -> None:
        """Flush, end the run in the store, remove the hooks."""
        try:
            if self._records or self.state.acc:
                self.flush()
            if self._store is not None:
                self._store.close(status)
                self._store = None
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
        elif issubclass(exc_type, (KeyboardInterrupt, TrainingStopped)):
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


_LOG = logging.getLogger("vitalstats")
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _stop_codes(stop_on: str | Collection[str] | None) -> frozenset[str] | None:
    """``stop_on`` as a set of codes (``"error"`` stands for every error-severity code)."""
    if stop_on is None:
        return None
    codes = frozenset([stop_on] if isinstance(stop_on, str) else stop_on)
    unknown = sorted(codes - set(CODES) - {"error"})
    if unknown:
        raise ValueError(
            f'vs.Monitor: stop_on={stop_on!r} names unknown codes {unknown}; use "error" or '
            "codes from vitalstats.monitor.CODES"
        )
    return codes


def _merge_by_step(window: list[StepMetrics]) -> list[StepMetrics]:
    """One ``StepMetrics`` per step (flush-time checks and evaluation phases add records)."""
    merged: dict[int, StepMetrics] = {}
    for metrics in window:
        into = merged.setdefault(metrics.step, StepMetrics(metrics.step))
        into.scalars.update(metrics.scalars)
        into.histograms.update(metrics.histograms)
        into.flags.update(metrics.flags)
    return sorted(merged.values(), key=lambda m: m.step)
