"""Run PyTorch's own module test definitions (``common_modules.module_db``, shipped in the torch
wheel) against the vitalstats twins: same constructor arguments, inputs and state, and the
torch module as the oracle for every observable result.

One sample is one (module, dtype, train/eval, ModuleInput). It passes when, against torch's
module built and loaded the same way, ours gives: the same output (values within the dtype's
tolerance, dtype, shape, memory format) and the reference_fn's output where torch gives one;
the same input and parameter gradients; the same buffers after the forward; a state_dict that
loads both ways; the same results for channels_last and non-contiguous inputs; and, in float64,
passes gradcheck and gradgradcheck. Error inputs must raise where torch raises, with the same
exception type, and match torch's regex wherever torch's own message does.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tests.nn._compare import assert_close


@dataclass(frozen=True)
class Twin:
    """A torch.nn class, its module_db entry's name, and the vitalstats class."""

    torch_cls: type[torch.nn.Module]
    entry: str  # module_db name of the eager twin, e.g. "nn.BatchNorm1d"
    ours: Callable[[], type[torch.nn.Module]]  # looked up late: a missing class fails one test
    lazy: bool = False


def _constructor(sample: Any, lazy_bn: bool) -> tuple[tuple, dict]:
    """Constructor args; a lazy BatchNorm drops num_features (InstanceNorm's inputs function
    builds lazy arguments itself)."""
    args, kwargs = sample.constructor_input.args, dict(sample.constructor_input.kwargs)
    return (args[1:] if lazy_bn else args), kwargs


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial parameters and running statistics (default init is ones and zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if isinstance(t, torch.nn.parameter.UninitializedTensorMixin) or t.numel() == 0:
                continue
            if name.endswith("num_batches_tracked"):
                t.fill_(3)
            elif name.endswith(("weight", "running_var")):
                t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float64) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64))


def _fresh_input(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A leaf copy of ``x`` in ``layout``: contiguous, channels_last or non-contiguous."""
    t = x.detach().clone()
    if layout == "channels_last":
        fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        t = t.to(memory_format=fmt)
    elif layout == "noncontiguous":  # same values, every other element of a doubled last dim
        t = torch.repeat_interleave(t, 2, dim=-1)[..., ::2] if t.dim() else t
    return t.requires_grad_(x.requires_grad)


def _memory_format(t: torch.Tensor) -> tuple[bool, ...]:
    formats = [t.is_contiguous()]
    if t.dim() == 4:
        formats.append(t.is_contiguous(memory_format=torch.channels_last))
    if t.dim() == 5:
        formats.append(t.is_contiguous(memory_format=torch.channels_last_3d))
    return tuple(formats)


def _compare_tensor(
    ours: torch.Tensor, theirs: torch.Tensor, dtype: torch.dtype, what: str
) -> None:
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype}, torch {theirs.dtype}"
    assert ours.shape == theirs.shape, (
        f"{what}: shape {tuple(ours.shape)}, torch {tuple(theirs.shape)}"
    )
    if theirs.is_floating_point():
        assert_close(ours, theirs, dtype, what)
    else:
        assert torch.equal(ours, theirs), f"{what}: {ours} != torch's {theirs}"


def _forward_backward(
    ours: torch.nn.Module,
    theirs: torch.nn.Module,
    x: torch.Tensor,
    layout: str,
    dtype: torch.dtype,
    seed: int,
) -> torch.Tensor:
    """One forward (and backward, if differentiable) of both on the same input; compares the
    output, its memory format, the gradients and the buffers; returns our output."""
    x_ours, x_theirs = _fresh_input(x, layout), _fresh_input(x, layout)
    out_theirs = theirs(x_theirs)
    out_ours = ours(x_ours)
    _compare_tensor(out_ours, out_theirs, dtype, f"{layout} output")
    if out_theirs.numel():  # an empty tensor is contiguous in every format
        assert _memory_format(out_ours) == _memory_format(out_theirs), (
            f"{layout} output memory format (contiguous, channels_last): "
            f"{_memory_format(out_ours)}, torch {_memory_format(out_theirs)}"
        )
    if out_theirs.requires_grad:
        g = torch.Generator().manual_seed(seed + 1)
        grad = torch.randn(out_theirs.shape, generator=g, dtype=torch.float64).to(dtype)
        out_theirs.backward(grad)
        out_ours.backward(grad)
        _compare_tensor(x_ours.grad, x_theirs.grad, dtype, f"{layout} input gradient")
        params_theirs = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            q = params_theirs[name]
            if q.grad is None:
                assert p.grad is None, f"{name}: gradient where torch has none"
            else:
                _compare_tensor(p.grad, q.grad, dtype, f"{layout} {name} gradient")
    buffers_theirs = dict(theirs.named_buffers())
    for name, b in ours.named_buffers():
        _compare_tensor(b, buffers_theirs[name], dtype, f"{layout} buffer {name} after forward")
    assert set(dict(ours.named_buffers())) == set(buffers_theirs), "buffer names differ"
    return out_ours


def _torch_factory(twin: Twin, args: tuple, kwargs: dict, x: torch.Tensor) -> Callable:
    """The torch oracle's constructor. A torch lazy InstanceNorm given unbatched input reads
    num_features from a spatial dim and fails its own sample; there the oracle is the eager
    torch class with the lazy one's settings and the true channel count."""

    def lazy() -> torch.nn.Module:
        return twin.torch_cls(*args, **kwargs)

    if not twin.lazy or "InstanceNorm" not in twin.entry:
        return lazy
    probe = lazy()
    try:
        with warnings.catch_warnings():  # torch warns about the num_features it inferred
            warnings.simplefilter("ignore", UserWarning)
            probe(x.detach().clone())
        return lazy
    except (RuntimeError, ValueError):
        pass
    spatial = int(twin.entry[-2])
    channels = x.shape[x.dim() - spatial - 1]
    settings = lazy()

    def eager() -> torch.nn.Module:
        return twin.torch_cls.cls_to_become(
            channels, settings.eps, settings.momentum, settings.affine,
            settings.track_running_stats, bias=settings.bias is not None,
        )  # fmt: skip

    return eager


def run_sample(
    twin: Twin, info: Any, sample: Any, dtype: torch.dtype, training: bool, seed: int
) -> None:
    """Every check of the module docstring for one sample; raises AssertionError on a miss."""
    ours_cls = twin.ours()
    lazy_bn = twin.lazy and "BatchNorm" in twin.entry
    args, kwargs = _constructor(sample, lazy_bn)

    torch_factory = _torch_factory(twin, args, kwargs, sample.forward_input.args[0])

    def pair() -> tuple[torch.nn.Module, torch.nn.Module]:
        """(ours, torch's) in the same state: torch's randomised, loaded into ours (strict)."""
        theirs = torch_factory().to(dtype).train(training)
        ours = ours_cls(*args, **kwargs).to(dtype).train(training)
        if not twin.lazy:  # a lazy module has no state before its first input
            _randomise(theirs, seed)
            ours.load_state_dict(theirs.state_dict())  # torch -> vitalstats
        return ours, theirs

    ours, theirs = pair()
    x = sample.forward_input.args[0]
    out = _forward_backward(ours, theirs, x, "contiguous", dtype, seed)
    if sample.reference_fn is not None:  # torch's test_forward, assertEqual's tolerances
        expected = sample.reference_fn(pair()[0], x.detach().clone())
        theirs_out = pair()[1](x.detach().clone())
        try:
            torch.testing.assert_close(theirs_out, expected)
        except AssertionError:  # torch's own output misses it (float32 reference of float64)
            pass
        else:
            torch.testing.assert_close(out, expected, msg=lambda m: f"against reference_fn: {m}")

    # vitalstats -> torch: a fresh torch module loads our state and ends in the same state
    fresh = torch_factory().to(dtype)
    fresh.load_state_dict(ours.state_dict())
    theirs_state = fresh.state_dict()
    ours_state = ours.state_dict()
    assert list(ours_state) == list(theirs_state), "state_dict keys or their order differ"
    for key, value in ours_state.items():
        _compare_tensor(value, theirs_state[key], dtype, f"state_dict {key} after the round trip")

    layouts = ["noncontiguous"] + (["channels_last"] if x.dim() in (4, 5) else [])
    for layout in layouts:
        _forward_backward(*pair(), x, layout, dtype, seed)

    if dtype == torch.float64 and x.requires_grad and x.numel() and not twin.lazy:
        _check_gradients(pair()[0], x, info.supports_gradgrad)


def _check_gradients(module: torch.nn.Module, x: torch.Tensor, gradgrad: bool) -> None:
    """torch's test_grad / test_gradgrad: numerical against analytical derivatives, input and
    parameters (float64)."""
    module(x.detach().clone())  # materialise a lazy module first
    names, params = (
        zip(*module.named_parameters(), strict=True)
        if any(True for _ in module.parameters())
        else ((), ())
    )

    def fn(x: torch.Tensor, *flat: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, dict(zip(names, flat, strict=True)), (x,))

    inputs = (
        x.detach().clone().requires_grad_(True),
        *(p.detach().clone().requires_grad_(True) for p in params),
    )
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)
    if gradgrad:
        assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


def run_error_sample(
    twin: Twin, error_input: Any, dtype: torch.dtype, training: bool, construction: Any
) -> None:
    """Ours raises where torch raises (same type; torch's regex wherever torch's own message
    matches it) and succeeds where torch succeeds."""
    ours_cls = twin.ours()
    sample = error_input.module_error_input
    args, kwargs = _constructor(sample, twin.lazy and "BatchNorm" in twin.entry)
    on_construction = error_input.error_on == construction
    regex = error_input.error_regex

    def attempt(cls: type[torch.nn.Module]) -> BaseException | None:
        try:
            module = cls(*args, **kwargs)
            if not on_construction:
                module.to(dtype).train(training)(*sample.forward_input.args)
        except Exception as err:
            return err
        return None

    import re

    theirs, ours = attempt(twin.torch_cls), attempt(ours_cls)
    if theirs is None:
        assert ours is None, f"ours raised {ours!r} where torch succeeds"
        return
    assert ours is not None, f"torch raises {theirs!r}, ours does not raise"
    assert isinstance(ours, type(theirs)), f"ours raised {ours!r}, torch {theirs!r}"
    if re.search(regex, str(theirs)):
        assert re.search(regex, str(ours)), f"ours: {ours}; torch's regex: {regex!r}"
