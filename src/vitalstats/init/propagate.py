"""The propagation analyser: one forward (and backward) pass, every leaf layer measured.

    >>> model = nn.Sequential(nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 10))
    >>> report = vs.init.propagate(model, torch.randn(256, 512))
    >>> print(report)                  # rich table
    >>> report["1"].saturated_fraction  # data: a sequence of LayerPropagation records

Measuring keeps each leaf output and reduces them all after the forward in a few batched
kernels, gets every output gradient from one ``torch.autograd.grad`` call, and moves the results
to the host once; the theory column is computed afterwards from the layers' parameters.
"""

from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitalstats.init import activations, theory
from vitalstats.init.gains import fan_in_and_fan_out
from vitalstats.init.measure import batched_statistics, statistic_kind, widened
from vitalstats.init.records import LayerPropagation, PropagationReport


@dataclass
class _Input:
    """A layer input no tracked layer produced (the model's input, a residual sum...)."""

    tensor: torch.Tensor | None
    version: int
    moments: torch.Tensor | None = None  # (mean, std), once measured


@dataclass
class _Call:
    """One call of one leaf module. Its output is kept and measured after the forward, with
    all the others in a few batched kernels; only an output that an in-place module is about
    to overwrite is measured on the spot."""

    name: str
    module: nn.Module
    output: torch.Tensor | None
    version: int
    source: int | _Input  # the call that produced the input, or the input itself
    statistics: torch.Tensor | None = None  # (mean, std, saturated, zero)
    grad_std: torch.Tensor | None = None
    grad_from_hook: bool = False


def _first_float_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() else None
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        for item in value:
            found = _first_float_tensor(item)
            if found is not None:
                return found
    return None


def _moments_now(tensor: torch.Tensor) -> torch.Tensor:
    return batched_statistics([widened(tensor)], ["plain"])[0][:2]


class _Recorder:
    """Hooks note where each input came from and keep each output for later."""

    def __init__(self, model: nn.Module, backward: bool) -> None:
        self.calls: list[_Call] = []
        self.backward = backward
        self._producers: dict[int, tuple[weakref.ref, int]] = {}
        self._pending: dict[int, list[int | _Input]] = {}
        self._times_called: dict[str, int] = {}
        self._handles = []
        for name, module in model.named_modules():
            if not list(module.children()):
                if getattr(module, "inplace", False) is True:
                    self._handles.append(module.register_forward_pre_hook(self._pre_hook))
                self._handles.append(module.register_forward_hook(self._hook(name)))

    def _producer(self, x: torch.Tensor) -> int | None:
        producer = self._producers.get(id(x))
        return producer[1] if producer is not None and producer[0]() is x else None

    def _source(self, x: torch.Tensor | None, in_place: bool) -> int | _Input:
        if x is None:
            return _Input(None, 0)
        index = self._producer(x)
        if index is None:  # an in-place module is about to overwrite it: measure it now
            return _Input(None, 0, _moments_now(x)) if in_place else _Input(x, x._version)
        if in_place:  # x is about to be overwritten: measure the producer's output now
            self._measure_now(self.calls[index], x)
        return index

    def _pre_hook(self, module: nn.Module, inputs: tuple) -> None:
        """Only on in-place modules, which overwrite their input: look before they do."""
        source = self._source(_first_float_tensor(inputs), in_place=True)
        self._pending.setdefault(id(module), []).append(source)

    def _measure_now(self, call: _Call, y: torch.Tensor) -> None:
        if call.statistics is None:
            call.statistics = batched_statistics([widened(y)], [statistic_kind(call.module)])[0]
            call.output = None
        if self.backward and y.requires_grad and not call.grad_from_hook:
            call.grad_from_hook = True  # fires with the gradient of the value before the overwrite
            y.register_hook(lambda grad: setattr(call, "grad_std", _moments_now(grad)[1]))

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            pending = self._pending.get(id(module))
            if pending:
                source = pending.pop()
            else:  # not in place: the input is as it was before the call
                source = self._source(_first_float_tensor(inputs), in_place=False)
            y = _first_float_tensor(output)
            if y is None:
                return
            count = self._times_called[name] = self._times_called.get(name, 0) + 1
            if isinstance(source, _Input) and source.tensor is None and source.moments is None:
                source = _Input(y, y._version)  # no float input (an embedding): start at y
            call_name = name if count == 1 else f"{name}#{count}"
            self.calls.append(_Call(call_name, module, y, y._version, source))
            self._producers[id(y)] = (weakref.ref(y), len(self.calls) - 1)

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def overwritten(self) -> list[str]:
        """Calls whose kept output an untracked in-place op changed; they are dropped (NaN)."""
        names = []
        for call in self.calls:
            if call.output is not None and call.output._version != call.version:
                call.output = None
                call.statistics = torch.full((4,), math.nan)
                names.append(call.name)
            source = call.source  # an input changed since: the theory cannot start from it
            stale = isinstance(source, _Input) and source.tensor is not None
            if stale and source.tensor._version != source.version:
                source.tensor, source.moments = None, torch.full((2,), math.nan)
        return names

    def measure(self) -> None:
        """Every kept output and input, in batched kernels; the outputs are released."""
        deferred = [c for c in self.calls if c.statistics is None and c.output is not None]
        inputs = [
            c.source
            for c in self.calls
            if isinstance(c.source, _Input)
            and c.source.moments is None
            and c.source.tensor is not None
        ]
        tensors = [widened(c.output) for c in deferred] + [widened(i.tensor) for i in inputs]
        kinds = [statistic_kind(c.module) for c in deferred] + ["plain"] * len(inputs)
        results = batched_statistics(tensors, kinds)
        for call, statistics in zip(deferred, results):
            call.statistics, call.output = statistics, None
        for source, statistics in zip(inputs, results[len(deferred) :]):
            source.moments, source.tensor = statistics[:2], None


def _call_model(model: nn.Module, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, list | tuple):
        return model(*x)
    return model(x)


def _unit_loss_gradients(output: Any, recorder: _Recorder, model: nn.Module, seed: int) -> None:
    """Backward of ``sum(output * g)``, g ~ N(0, 1): a unit-variance gradient at the output.

    One ``torch.autograd.grad`` call returns the gradient of every kept output (no Python
    runs per layer) and of the parameters, which are dropped: no ``.grad`` is written.
    """
    y = _first_float_tensor(output)
    if y is None or not y.requires_grad:
        return
    generator = torch.Generator(device=y.device).manual_seed(seed)
    direction = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    wanted: dict[int, torch.Tensor] = {}
    for call in recorder.calls:
        if call.output is not None and call.output.requires_grad and not call.grad_from_hook:
            wanted.setdefault(id(call.output), call.output)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not wanted and not parameters:
        return
    inputs = [*wanted.values(), *parameters]
    gradients = torch.autograd.grad((y * direction).sum(), inputs, allow_unused=True)
    by_id = {key: g for key, g in zip(wanted, gradients) if g is not None}
    pairs = [
        (c, by_id[id(c.output)])
        for c in recorder.calls
        if c.output is not None and not c.grad_from_hook and id(c.output) in by_id
    ]
    results = batched_statistics([widened(g) for _, g in pairs], ["plain"] * len(pairs))
    for (call, _), statistics in zip(pairs, results):
        call.grad_std = statistics[1]


def propagate(model: nn.Module, x: Any, backward: bool = True, seed: int = 0) -> PropagationReport:
    """Run ``model(x)`` once (and a backward pass) and measure every leaf layer's output.

    Returns a :class:`PropagationReport`: per leaf-layer call its name, type, fan_in/fan_out,
    output mean and std, saturated and zero fractions, output-gradient std, and the std the
    mean-field theory predicts from the realised weights, the gains of the activations and the
    input's moments. ``x`` is a tensor, or a tuple/dict of arguments. The model runs in its
    current mode (train or eval); running statistics it updates (BatchNorm) are restored
    afterwards and no ``.grad`` is written. ``seed`` fixes the unit loss's random direction.

    Memory: every leaf output is kept until the end of the call (as training keeps most of
    them for the backward anyway), then measured in a few batched kernels.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"propagate: model must be an nn.Module; got {type(model).__name__}.")
    backward = backward and torch.is_grad_enabled()  # under torch.no_grad(): forward only
    first_input = _first_float_tensor(x if isinstance(x, list | tuple) else [x])
    input_moments = None if first_input is None else _moments_now(first_input)
    saved_buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    recorder = _Recorder(model, backward)
    try:
        with torch.set_grad_enabled(backward):
            output = _call_model(model, x)
        overwritten = recorder.overwritten()
        if backward:
            _unit_loss_gradients(output, recorder, model, seed)
        recorder.measure()
    finally:
        recorder.remove()
        with torch.no_grad():
            for buffer, saved in saved_buffers:
                buffer.copy_(saved)
    if not recorder.calls:
        raise ValueError(
            f"propagate: no leaf layer of {type(model).__name__} produced a floating-point "
            "tensor during model(x); check that x is the input the model expects."
        )
    if overwritten:
        warnings.warn(
            f"propagate: the outputs of {overwritten} were overwritten in place by an operation "
            "inside forward() that is not a module (e.g. x.relu_()); their rows are NaN. Use "
            "an nn.ReLU(inplace=True) module or an out-of-place op to have them measured.",
            stacklevel=2,
        )
    return _build_report(recorder.calls, input_moments, backward)


def _to_host(tensors: list[torch.Tensor]) -> list[list[float]]:
    """One transfer for many small tensors (of any length) on one or several devices."""
    if not tensors:
        return []
    device = tensors[0].device
    flat = torch.cat([t.detach().to(device, torch.float64).reshape(-1) for t in tensors]).tolist()
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()])
        start += t.numel()
    return out


def _build_report(
    calls: list[_Call], input_moments: torch.Tensor | None, backward: bool
) -> PropagationReport:
    modules = list({id(call.module): call.module for call in calls}.values())
    summaries = theory.parameter_summaries(modules)
    with_summary = list(summaries)
    measured_inputs = [i for i, call in enumerate(calls) if isinstance(call.source, _Input)]
    with_grad = [i for i, call in enumerate(calls) if call.grad_std is not None]
    input_stats = [] if input_moments is None else [input_moments]
    host = _to_host(
        [call.statistics for call in calls]
        + [calls[i].source.moments for i in measured_inputs]
        + [calls[i].grad_std for i in with_grad]
        + [summaries[key] for key in with_summary]
        + input_stats
    )
    n, n_in, n_grad = len(calls), len(measured_inputs), len(with_grad)
    statistics = host[:n]
    source_moments = dict(zip(measured_inputs, host[n : n + n_in]))
    grad_stds = {i: values[0] for i, values in zip(with_grad, host[n + n_in : n + n_in + n_grad])}
    summary_values = dict(
        zip(with_summary, host[n + n_in + n_grad : n + n_in + n_grad + len(with_summary)])
    )
    input_mean, input_std = host[-1] if input_stats else (math.nan, math.nan)

    chain: list[theory.GaussianMoments] = []  # the moments the next layer starts from
    records = []
    for i, call in enumerate(calls):
        mean, std, saturated, zero = statistics[i]
        if isinstance(call.source, int):
            moments_in = chain[call.source]
        else:
            moments_in = theory.GaussianMoments(source_moments[i][0], source_moments[i][1] ** 2)
        predicted = theory.predict(call.module, summary_values.get(id(call.module)), moments_in)
        chain.append(predicted if predicted is not None else theory.GaussianMoments(mean, std**2))
        fans = _fans(call.module)
        records.append(
            LayerPropagation(
                name=call.name,
                type=activations.describe(call.module),
                fan_in=fans[0],
                fan_out=fans[1],
                mean=mean,
                std=std,
                predicted_std=None if predicted is None else predicted.std,
                saturated_fraction=None if math.isnan(saturated) else saturated,
                zero_fraction=None if math.isnan(zero) else zero,
                grad_std=grad_stds.get(i),
            )
        )
    return PropagationReport(tuple(records), input_mean, input_std, backward)


def _fans(module: nn.Module) -> tuple[int | None, int | None]:
    weight = getattr(module, "weight", None)
    if (
        activations.is_weight_layer(module)
        and isinstance(weight, torch.Tensor)
        and weight.dim() >= 2
    ):
        return fan_in_and_fan_out(weight)
    return None, None
