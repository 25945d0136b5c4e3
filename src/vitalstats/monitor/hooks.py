"""The monitor's hooks: where measurements are taken, and nothing else.

A pre-hook on the root module (the model input), forward hooks on the watched leaf layers,
pre-hooks on BatchNorm layers (running statistics before the update), tensor hooks on layer
outputs (output gradients, only in steps that measure them), the optimizer's step pre/post
hooks (gradients once per optimiser step, the applied update, Adam's moments) and one
post-accumulate-grad hook on a sentinel parameter (gradients never zeroed). Every hook reads
the explicit ``MeasureState`` it is given, hands detached device tensors to the probes and
Python facts to ``state.observe``; none makes a finding.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vitalstats.monitor import norm_layers as bn
from vitalstats.monitor import probes
from vitalstats.monitor.parameters import ParameterProbe, local_view
from vitalstats.monitor.state import MeasureState
from vitalstats.stats.kernels import summary_kernel

_MAX_INPUT_FEATURES = 4096  # wider inputs (token embeddings fed as floats) are not profiled


def input_tensor(args: tuple, kwargs: dict | None) -> torch.Tensor | None:
    """The model's first floating-point input, positional or keyword (``pixel_values=``)."""
    found = probes.first_tensor(args)
    if found is None and kwargs:
        found = probes.first_tensor(kwargs)
    return found


def upstream_layer(x: torch.Tensor, produced: dict[Any, str], max_hops: int = 12) -> str | None:
    """The weighted layer whose output reaches ``x`` through single-input operations only
    (activations, dropout, reshapes), found by walking ``x``'s autograd graph back; None when
    a node with two non-leaf inputs (a residual sum, a concatenation, an attention product)
    or a normalisation (which resets the scale) comes first, or nothing was recorded. Layers
    whose outputs are added together are therefore not a depth chain."""
    node = x.grad_fn
    for _ in range(max_hops):
        if node is None:
            return None
        found = produced.get(node)
        if found is not None:
            return found
        if "Norm" in type(node).__name__:  # a normalisation resets the scale: no chain
            return None
        inputs = [
            n
            for n, _ in node.next_functions
            if n is not None and type(n).__name__ != "AccumulateGrad"
        ]
        if len(inputs) != 1:
            return None
        node = inputs[0]
    return None


class Hooks:
    """Registers and runs every hook of one monitor on ``state``."""

    def __init__(
        self,
        state: MeasureState,
        root: nn.Module,
        layers: list[tuple[str, nn.Module]],
        parameters: ParameterProbe,
        optimizer: torch.optim.Optimizer | None,
    ) -> None:
        self.state, self.root, self.layers = state, root, layers
        self.parameters, self.optimizer = parameters, optimizer
        self._handles: list[Any] = []
        self._bn_before: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._mode_layers = [
            (name, m) for name, m in root.named_modules() if bn.is_batchnorm(m) or bn.is_dropout(m)
        ]
        trainable = [p for _, p in parameters.named]
        self._sentinel = min(trainable, key=lambda p: p.numel()) if trainable else None
        self._grad_at_step: tuple[torch.Tensor, int] | None = None
        self.step_depth = 0  # optimizer.step() calls in progress (Monitor.step resets it)
        self._summary = summary_kernel(state.config.kernels)
        self._shift_hints: dict[tuple[str, str], torch.Tensor] | None = (
            {} if state.config.kernels != "eager" else None
        )

    # ----------------------------------------------------------------------------- life cycle
    def attach(self) -> None:
        if self._handles:
            return
        handles = self._handles
        handles.append(self.root.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True))
        for name, module in self.layers:
            if bn.is_batchnorm(module):
                handles.append(module.register_forward_pre_hook(self._norm_pre_hook(name)))
            handles.append(module.register_forward_hook(self._forward_hook(name, module)))
        if self.optimizer is not None:
            handles.append(self.optimizer.register_step_pre_hook(self._before_optimizer_step))
            handles.append(self.optimizer.register_step_post_hook(self._after_optimizer_step))
        if self._sentinel is not None and not self.state.lint:
            handles.append(self._sentinel.register_post_accumulate_grad_hook(self._accumulated))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.state.biased_output = None
        self.state.produced.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    # ----------------------------------------------------------------------------- forward
    def _root_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        s = self.state
        s.biased_output = None
        if not s.measuring():
            return
        if not module.training and not s.lint and self._mode_layers:
            in_eval = [name for name, m in self._mode_layers if not m.training]
            if in_eval:
                s.eval_mode_layers = in_eval  # a step taken after this is in eval mode
        if not s.due.nonfinite and not s.due.activations:
            return
        x = input_tensor(args, kwargs)
        if x is None or x.dim() == 0 or x.shape[0] == 0:
            return
        x = x.detach()  # no graph is built below
        if s.due.nonfinite:  # one reduction; the first bad index is found at flush
            per_sample = x.reshape(x.shape[0], -1).sum(1, dtype=torch.float32)
            s.acc.add("", probes.INPUT_SAMPLE_SUMS, per_sample, "same")  # this rank's batch
            s.acc.add("", probes.INPUT_SUM, per_sample.sum(), "sum")  # NaN on any rank
        features = x.shape[-1] if x.dim() == 3 else (x.shape[1] if x.dim() >= 2 else 0)
        if s.due.activations and 0 < features <= _MAX_INPUT_FEATURES:
            for field, value, rule in probes.input_feature_entries(x, s.config.kernels):
                s.acc.add("", field, value, rule)

    def _forward_hook(self, name: str, layer: nn.Module) -> Callable[[nn.Module, tuple, Any], None]:
        s = self.state
        kind = s.kinds[name]
        config = s.config
        is_linear = isinstance(layer, nn.Linear) or type(layer).__name__ == "Conv1D"
        sentinel = probes.can_create_nonfinite(layer)
        batchnorm = bn.is_batchnorm(layer)
        chained = kind == "weighted" and not probes.is_embedding(layer)
        normalises = "Norm" in type(layer).__name__

        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if name not in s.seen_layers:
                s.seen_layers.add(name)
                s.forward_order.append(name)
            previous_is_linear, s.previous_is_linear = s.previous_is_linear, is_linear
            y = probes.first_tensor(output)
            if y is None:
                return
            if kind == "weighted" and getattr(module, "bias", None) is not None:
                s.biased_output = (name, y)
            d = s.due
            if not d.forward or not s.measuring():
                return
            acc = s.acc  # every probe below works on detached tensors: no graph is built
            detached = y.detach()
            summarised = d.activations and detached.numel()
            if summarised:
                unit_dim = -1 if detached.dim() >= 3 and previous_is_linear else 1
                level = config.thresholds.saturation_level
                entries = probes.activation_entries(
                    detached, kind, unit_dim, level, config.histogram_max_values, self._summary,
                    self._hint(name, "act"),
                )  # fmt: skip
                for field, value, rule in entries:
                    acc.add(name, field, value, rule)
                self._link(name, args, y, chained, normalises)
            if d.nonfinite and sentinel:  # the summary's centre is non-finite iff the output is
                value = entries[0][1][1] if summarised else probes.nonfinite_sentinel(detached)
                acc.add(name, probes.NONFINITE, value, "sum")
            if d.histograms and detached.numel():
                self._activation_histogram(name, detached)
            if batchnorm and d.norm_layers and module.training:
                self._batch_statistics(name, module, args)
            if d.output_grads and y.requires_grad and not s.lint:
                if torch.compiler.is_compiling():  # a tensor hook's side effect cannot be traced
                    s.degrade("out_grad_std", "a tensor hook cannot record inside a compiled graph")
                else:
                    y.register_hook(self._output_grad_hook(name))

        return hook

    def _link(self, name: str, args: tuple, y: torch.Tensor, chained: bool, is_norm: bool) -> None:
        """Record which weighted layer feeds this one (for the depth trend): through the
        autograd graph when gradients flow, else (a no_grad forward, as in ``vs.lint``)
        through the very tensor objects leaf modules pass on."""
        if torch.compiler.is_compiling():  # no graph nodes inside a traced graph
            return
        s = self.state
        x = probes.first_tensor(args)
        passed = s.passed_on.get(id(x)) if x is not None else None
        upstream = passed[1] if passed is not None and passed[0]() is x else None
        if not chained:  # an activation or dropout passes its upstream layer on; a norm not
            if upstream is not None and not is_norm:
                s.passed_on[id(y)] = (weakref.ref(y), upstream)
            return
        if x is not None and x.grad_fn is not None:
            upstream = upstream_layer(x, s.produced) or upstream
        if upstream is not None:
            s.links[name] = upstream
        if y.grad_fn is not None:
            s.produced[y.grad_fn] = name
        s.passed_on[id(y)] = (weakref.ref(y), name)

    def _batch_statistics(self, name: str, module: nn.Module, args: tuple) -> None:
        x = probes.first_tensor(args)
        before = self._bn_before.pop(name, None)
        if x is None or x.dim() < 2:
            return
        block = bn.batch_summaries(module, x, before)
        if block is None:
            return
        if before is not None:
            self.state.acc.add(name, bn.BN_RUNNING_MEAN, before[0], "same")
            self.state.acc.add(name, bn.BN_RUNNING_VAR, before[1], "same")
        self.state.acc.add(name, bn.BN_BATCH, block, "summary")

    def _hint(self, name: str, what: str) -> torch.Tensor | None:
        """The layer's mean in its last summary of ``what`` (NaN at first): the C kernels'
        proposed shift, so one pass over the tensor is enough (``native``)."""
        if self._shift_hints is None or torch.compiler.is_compiling():
            return None
        hint = self._shift_hints.get((name, what))
        if hint is None:
            hint = self._shift_hints[(name, what)] = torch.full(
                (1,), float("nan"), dtype=torch.float64
            )
        return hint

    def _activation_histogram(self, name: str, y: torch.Tensor) -> None:
        """``act_hist`` of a layer output: binned in place now by the C kernels, else its
        sample is copied out and binned with every other layer's in ``step()``."""
        s, config = self.state, self.state.config
        if probes.native_histograms_apply([y], config.kernels):
            counts = probes.histogram_counts([y], config.histogram_bins,
                                             config.activation_histogram_range,
                                             config.histogram_max_values, kernels=config.kernels)  # fmt: skip
            s.acc.add(name, probes.ACT_HIST, counts[0], "sum")
        else:  # binned for every layer at once, in step()
            s.histogram_samples.append(
                (name, probes.activation_sample(y, config.histogram_max_values))
            )

    def _output_grad_hook(self, name: str) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            entries = probes.output_grad_entries(
                grad.detach(), self._summary, self._hint(name, "out_grad")
            )
            for field, value, rule in entries:
                self.state.acc.add(name, field, value, rule)

        return hook

    def _norm_pre_hook(self, name: str) -> Callable[[nn.Module, tuple], None]:
        s = self.state

        def hook(module: nn.Module, args: tuple) -> None:
            x = probes.first_tensor(args)
            if x is None:
                return
            biased = s.biased_output
            if biased is not None and biased[1] is x:
                s.observe("bias_before_norm", biased[0], norm=name)
            evaluating = s.evaluating and not s.lint
            if module.training and (evaluating or not torch.is_grad_enabled()):
                where = "inside Monitor.evaluating()" if evaluating else "under torch.no_grad()"
                if not (s.lint and not evaluating):
                    s.observe("bn_train_in_eval", name, where=where)
            if bn.uses_batch_statistics(module):
                if module.training:
                    per_channel = bn.values_per_channel(module, x)
                    fewest = s.fewest_values.get(name)
                    if fewest is None or per_channel < fewest:  # a new minimum: worth a look
                        s.fewest_values[name] = per_channel
                        s.observe("bn_values_per_channel", name, once=False, values=per_channel,
                                  shape=tuple(x.shape))  # fmt: skip
                else:
                    s.observe("bn_batch_stats_at_inference", name)
            if bn.frozen_but_updating(module):
                s.observe("bn_frozen_but_updating", name)
            if s.due.norm_layers and module.training and s.measuring():
                running = bn.running_snapshot(module)
                if running:
                    self._bn_before[name] = (running[0][1], running[1][1])

        return hook

    # ----------------------------------------------------------------------------- optimizer
    def _before_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        # optimizer.step(closure) (LBFGS, Lightning's automatic optimisation) runs forward and
        # backward inside step(): this step's gradients exist only after it, so read them then.
        # torch fires the hooks again around a subclass's super().step() (it patches each
        # class's step): only the outermost call is the user's optimiser step.
        self.step_depth += 1
        if self.step_depth > 1:
            return
        s = self.state
        # torch calls step pre-hooks with the step's own arguments: args[0] is the optimizer
        closure = args[1] if len(args) > 1 else (kwargs or {}).get("closure")
        s.gradients_after_step = closure is not None
        s.optimizer_stepped = True
        if not s.evaluating:
            self.measure_before_step(gradients=closure is None)

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.step_depth = max(self.step_depth - 1, 0)
        if self.step_depth > 0:
            return
        s = self.state
        if s.gradients_after_step and not s.evaluating:
            self.measure_gradients()
        if s.due.updates:
            self.parameters.updates(s.acc)
        if s.due.optimizer_moments:
            self.parameters.optimizer_moments(optimizer, s.acc)
        self.parameters.end_step()
        self.mark_gradients_used()

    def measure_before_step(self, snapshot: bool = True, gradients: bool = True) -> None:
        d, probe, acc = self.state.due, self.parameters, self.state.acc
        if d.parameters or d.updates:
            probe.weights(acc, snapshot=d.updates and snapshot)  # the copy: in the same pass
        if gradients:
            self.measure_gradients()

    def measure_gradients(self) -> None:
        s = self.state
        d, probe = s.due, self.parameters
        if d.grad_norm or d.parameters:
            probe.gradients(s.acc, full=d.parameters)
        if d.histograms:
            self._gradient_histograms()

    @torch.no_grad()
    def _gradient_histograms(self) -> None:
        """``grad_hist`` of every parameter in one batched binning: of the whole gradient
        where every rank holds it (rule ``same``), of the local shard where it is sharded
        (counts add over the shard group; an empty shard adds zeros so every rank records the
        same keys)."""
        s, config = self.state, self.state.config
        for group in self.parameters.groups:
            names, grads = [], []
            for name, p in zip(group.names, group.params):
                g = p.grad
                if g is None or g.is_sparse:
                    continue
                g = local_view(g.detach())
                if g.numel() or group.sharded:
                    names.append(name)
                    grads.append(g)
            if not names:
                continue
            counts = probes.histogram_counts(
                grads, config.histogram_bins, config.gradient_histogram_log10_range,
                config.histogram_max_values, log10_abs=True, kernels=config.kernels,
            )  # fmt: skip
            for name, row in zip(names, counts):
                s.acc.add(name, probes.GRAD_HIST, row, group.rule("sum"), group.reduce_over)

    def bin_activation_histograms(self) -> None:
        """``act_hist`` of every layer sampled in this step, in one batched binning; a layer
        run several times (micro-batches) adds its counts."""
        s = self.state
        if not s.histogram_samples:
            return
        names = [name for name, _ in s.histogram_samples]
        counts = probes.histograms(
            [sample for _, sample in s.histogram_samples],
            s.config.histogram_bins,
            s.config.activation_histogram_range,
        )
        s.histogram_samples.clear()
        for name, row in zip(names, counts):
            s.acc.add(name, probes.ACT_HIST, row, "sum")

    # ----------------------------------------------------------------------------- zero_grad
    def mark_gradients_used(self) -> None:
        """The step just consumed the gradients: remember the sentinel's gradient tensor and
        its version, so the next backward can tell whether it was reset in between."""
        p = self._sentinel
        if p is not None and p.grad is not None and not p.grad.is_sparse:
            self._grad_at_step = (p.grad, p.grad._version)
        else:
            self._grad_at_step = None

    def _accumulated(self, p: torch.Tensor) -> None:
        """First accumulation after a step: the same tensor, one version later, means the
        backward added onto the previous step's gradient (neither zero_() nor set_to_none)."""
        previous, self._grad_at_step = self._grad_at_step, None
        if previous is None or p.grad is None:
            return
        tensor, version = previous
        if p.grad is tensor and p.grad._version == version + 1:
            self.state.observe("grad_carried_over", "", once=False)
