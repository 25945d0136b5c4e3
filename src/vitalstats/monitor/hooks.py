"""The monitor's hooks: where measurements are taken, and nothing else.

Forward hooks on the watched leaf layers, a pre-hook on the root (the input), pre-hooks on
BatchNorm layers (running statistics before the update), tensor hooks on layer outputs
(output gradients, only in steps that measure them) and the optimizer's step pre/post hooks
(gradients once per optimiser step, the applied update, Adam's moments). Each hook reads the
step's ``_Due`` flags and hands detached tensors to the probes; ``Monitor`` mixes this in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitalstats.monitor import linting
from vitalstats.monitor.diagnoses import norm_layer_runtime
from vitalstats.monitor.norm_layers import (
    batch_moments_from_attributes,
    batch_moments_from_input,
    is_batchnorm,
    running_snapshot,
    values_per_channel,
)
from vitalstats.monitor.probes import (
    activation_entries,
    activation_histogram,
    can_create_nonfinite,
    first_tensor,
    gradient_histogram,
    nonfinite_sentinel,
    output_grad_entries,
)


@dataclass
class _Due:
    """Which probes run in the current optimiser step (decided once per step)."""

    nonfinite: bool = False
    grad_norm: bool = False
    activations: bool = False
    output_grads: bool = False
    parameters: bool = False
    updates: bool = False
    optimizer_moments: bool = False
    norm_layers: bool = False
    histograms: bool = False

    @property
    def forward(self) -> bool:
        return self.nonfinite or self.activations or self.output_grads or self.histograms


class HookMixin:
    """Hook registration and bodies for ``Monitor`` (which owns the state they use)."""

    # ----------------------------------------------------------------------------- hooks
    def attach(self) -> Any:
        """Register every hook (idempotent); returns self."""
        if self._handles:
            return self
        handles = self._handles
        handles.append(self.inner.register_forward_pre_hook(self._root_pre_hook))
        for name, module in self.layers:
            if is_batchnorm(module):
                handles.append(module.register_forward_pre_hook(self._norm_pre_hook(name)))
            handles.append(module.register_forward_hook(self._forward_hook(name)))
        if self.optimizer is not None:
            handles.append(self.optimizer.register_step_pre_hook(self._before_optimizer_step))
            handles.append(self.optimizer.register_step_post_hook(self._after_optimizer_step))
        return self

    def detach(self) -> Any:
        """Remove every hook: the model and optimiser behave exactly as before."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._biased_output = None
        return self

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def _measuring(self) -> bool:
        return self._lint or (not self._evaluating and torch.is_grad_enabled())

    def _root_pre_hook(self, module: nn.Module, args: tuple) -> None:
        self._biased_output = None
        if not (self._due.nonfinite and self._measuring()):
            return
        x = first_tensor(args)
        if x is None or x.dim() == 0 or x.shape[0] == 0:
            return
        with torch.no_grad():  # one reduction; the first non-finite index is found at flush
            per_sample = x.detach().reshape(x.shape[0], -1).sum(1, dtype=torch.float32)
        self._acc.add("", "input_sample_sums", per_sample, "same")  # this rank's batch
        self._acc.add("", "input_sum", per_sample.sum(), "sum")  # merged: NaN on any rank

    def _forward_hook(self, name: str) -> Callable[[nn.Module, tuple, Any], None]:
        kind = self._kinds[name]
        config = self.config
        layer = dict(self.layers)[name]
        is_linear = isinstance(layer, nn.Linear)
        sentinel = can_create_nonfinite(layer)

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if name not in self._seen_layers:
                self._seen_layers.add(name)
                self._diagnoser.forward_order.append(name)
            # (N, L, C) after a Linear: units are the last dim; else dim 1 (conv channels)
            previous_is_linear, self._previous_is_linear = self._previous_is_linear, is_linear
            y = first_tensor(output)
            if y is None:
                return
            if kind == "weighted" and getattr(module, "bias", None) is not None:
                self._biased_output = (name, y)
            d = self._due
            if not (d.forward or d.norm_layers) or not self._measuring():
                return
            acc = self._acc
            with torch.no_grad():
                detached = y.detach()
                if d.nonfinite and sentinel:
                    acc.add(name, "nonfinite", nonfinite_sentinel(detached), "sum")
                if d.activations and detached.numel():
                    unit_dim = -1 if detached.dim() >= 3 and previous_is_linear else 1
                    level = config.thresholds.saturation_level
                    for field, value, rule in activation_entries(detached, kind, unit_dim, level):
                        acc.add(name, field, value, rule)
                if d.histograms and detached.numel():
                    counts = activation_histogram(
                        detached,
                        config.histogram_bins,
                        config.activation_histogram_range,
                        config.histogram_max_values,
                    )
                    acc.add(name, "act_hist", counts, "sum")
                if d.norm_layers and module.training and "batch_mean" in module.__dict__:
                    x = first_tensor(args)
                    count = values_per_channel(module, x) if x is not None else 0
                    block = batch_moments_from_attributes(module, count)
                    if block is not None and count:
                        acc.add(name, "bn_batch", block, "moments")
            if d.output_grads and y.requires_grad and not self._lint:
                y.register_hook(self._output_grad_hook(name))

        return hook

    def _output_grad_hook(self, name: str) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            with torch.no_grad():
                for field, value, rule in output_grad_entries(grad.detach()):
                    self._acc.add(name, field, value, rule)

        return hook

    def _norm_pre_hook(self, name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            x = first_tensor(args)
            if x is None:
                return
            biased = self._biased_output
            if biased is not None and biased[1] is x:
                self.findings.add(linting.bias_before_norm_finding(biased[0], name))
            evaluating = self._evaluating and not self._lint
            for finding in norm_layer_runtime(
                name, module, x, self.step_index, evaluating, self.config.thresholds
            ):
                if not (self._lint and finding.code == "BN_TRAIN_IN_EVAL"):
                    self.findings.add(finding)
            if not (self._due.norm_layers and module.training and self._measuring()):
                return
            with torch.no_grad():
                for field, value, rule in running_snapshot(module):
                    self._acc.add(name, field, value, rule)
                if "batch_mean" not in module.__dict__ and x.dim() >= 2 and x.numel():
                    self._acc.add(name, "bn_batch", batch_moments_from_input(x), "moments")

        return hook

    def _before_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        # optimizer.step(closure) (LBFGS, Lightning's automatic optimisation) runs forward and
        # backward inside step(): this step's gradients exist only after it, so read them then.
        closure = args[0] if args else (kwargs or {}).get("closure")
        has_closure = closure is not None
        self._gradients_after_step = has_closure
        if not self._evaluating:
            self._measure_parameters_before(gradients=not has_closure)

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        d = self._due
        if self._gradients_after_step and not self._evaluating:
            self._measure_gradients()
        if d.updates:
            self.parameters.updates(self._acc)
        if d.optimizer_moments:
            self.parameters.optimizer_moments(optimizer, self._acc)

    def _measure_parameters_before(self, snapshot: bool = True, gradients: bool = True) -> None:
        d, probe, acc = self._due, self.parameters, self._acc
        if d.parameters or d.updates:
            probe.weights(acc)
        if d.updates and snapshot:
            probe.snapshot()
        if gradients:
            self._measure_gradients()

    def _measure_gradients(self) -> None:
        d, probe, acc = self._due, self.parameters, self._acc
        if d.grad_norm or d.parameters:
            probe.gradients(acc, full=d.parameters)
        if d.histograms:
            with torch.no_grad():
                for name, p in probe.named:
                    if p.grad is not None and p.grad.numel() and not p.grad.is_sparse:
                        counts = gradient_histogram(
                            p.grad.detach(),
                            self.config.histogram_bins,
                            self.config.gradient_histogram_log10_range,
                            self.config.histogram_max_values,
                        )
                        acc.add(name, "grad_hist", counts, "sum")
