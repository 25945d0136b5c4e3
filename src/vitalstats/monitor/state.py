"""What the hooks read and write, as one explicit object (``MeasureState``).

The hooks (``hooks.py``) are given this state; they never reach into ``Monitor``. Device
values go to ``acc`` (the step accumulator); Python facts a hook notices (a BatchNorm in
training mode during evaluation, a bias feeding a BatchNorm, a forward in eval mode, a
gradient carried over from the last step, probabilities fed to a logit loss) go to
``observations``, which only ``diagnoses`` turns into findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from vitalstats.monitor.config import MonitorConfig, due
from vitalstats.monitor.recorder import StepAccumulator


@dataclass
class Due:
    """Which probes run in the current optimiser step (decided once per step, updated in
    place so a compiled graph guards on plain attributes)."""

    nonfinite: bool = False
    grad_norm: bool = False
    activations: bool = False
    output_grads: bool = False
    parameters: bool = False
    updates: bool = False
    optimizer_moments: bool = False
    norm_layers: bool = False
    histograms: bool = False
    forward: bool = False  # any forward-hook probe

    def update(self, config: MonitorConfig, step: int) -> None:
        self.nonfinite = due(config.nonfinite_every, step)
        self.grad_norm = due(config.grad_norm_every, step)
        self.activations = due(config.activations_every, step)
        self.output_grads = due(config.output_grads_every, step)
        self.parameters = due(config.parameters_every, step)
        self.updates = due(config.updates_every, step)
        self.optimizer_moments = due(config.optimizer_moments_every, step)
        self.norm_layers = due(config.norm_layers_every, step)
        self.histograms = due(config.histograms_every, step)
        self.forward = (
            self.nonfinite or self.activations or self.output_grads or self.histograms
            or self.norm_layers
        )  # fmt: skip


@dataclass(frozen=True)
class Observation:
    """A Python-side fact a hook noticed at ``step`` (``kind`` names it; ``data`` holds what
    the finding's message needs). ``diagnoses`` decides what it means."""

    kind: str
    layer: str
    step: int
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class MeasureState:
    """Everything the hooks share with the monitor, explicitly."""

    config: MonitorConfig
    kinds: dict[str, str]  # layer name -> probes.layer_kind
    lint: bool = False
    due: Due = field(default_factory=Due)
    acc: StepAccumulator = field(default_factory=StepAccumulator)
    step: int = 0  # the optimiser step being measured
    evaluating: bool = False  # inside Monitor.evaluating()
    observations: list[Observation] = field(default_factory=list)
    forward_order: list[str] = field(default_factory=list)  # layers in first-run order
    seen_layers: set[str] = field(default_factory=set)
    links: dict[str, str] = field(default_factory=dict)  # weighted layer -> its upstream one
    previous_is_linear: bool = False  # (N, L, C) after a Linear: units are the last dim
    biased_output: tuple[str, torch.Tensor] | None = None  # the last biased layer's output
    produced: dict[Any, str] = field(default_factory=dict)  # output node -> weighted layer
    passed_on: dict[int, tuple[Any, str]] = field(default_factory=dict)  # id(tensor) -> layer
    gradients_after_step: bool = False  # optimizer.step(closure): read gradients after it
    optimizer_stepped: bool = False  # the optimizer's step ran since the last Monitor.step
    eval_mode_layers: list[str] = field(default_factory=list)  # eval-mode BN/dropout this step
    fewest_values: dict[str, int] = field(default_factory=dict)  # BatchNorm: values/channel
    histogram_samples: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    degraded: dict[str, str] = field(default_factory=dict)  # metric -> why it is not measured
    _noticed: set[tuple[str, str]] = field(default_factory=set)
    _pending: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def degrade(self, what: str, why: str) -> None:
        """A statistic this run cannot measure (the monitor warns once, naming it)."""
        self.degraded.setdefault(what, why)

    def observe(self, kind: str, layer: str, once: bool = True, **data: Any) -> None:
        """Record an observation (by default once per kind and layer over the run). It is
        stamped with its step when the step closes (``end_step``): reading the step counter
        here would make a compiled graph guard on it and recompile every step."""
        if once:
            if (kind, layer) in self._noticed:
                return
            self._noticed.add((kind, layer))
        self._pending.append((kind, layer, data))

    def end_step(self) -> None:
        """Stamp the step's observations; forget its tensors and graph nodes (kept only to
        link layers)."""
        self.observations.extend(
            Observation(k, layer, self.step, d) for k, layer, d in self._pending
        )
        self._pending.clear()
        self.eval_mode_layers = []
        self.produced.clear()
        self.passed_on.clear()
        self.biased_output = None

    def take_observations(self) -> list[Observation]:
        """Every stamped observation since the last call (outside a step: also those of the
        step in progress, stamped with its index)."""
        self.observations.extend(
            Observation(k, layer, self.step, d) for k, layer, d in self._pending
        )
        self._pending.clear()
        out, self.observations = self.observations, []
        return out

    def measuring(self) -> bool:
        """A training forward that is measured: not evaluation, gradients enabled (lint
        measures its no_grad forward)."""
        return self.lint or (not self.evaluating and torch.is_grad_enabled())
