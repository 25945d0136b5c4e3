"""PreciseBN: replace BatchNorm running statistics by exact population statistics.

The EMA in ``running_mean``/``running_var`` mixes statistics from weights of many past steps
and is noisy for small batches. ``recompute_bn_stats`` feeds data through the model with the
weights frozen and sets, per channel,

    running_mean = sum(x) / n,   running_var = sum((x - running_mean)^2) / n

over all n values each BatchNorm sees (its input, all batches pooled), accumulated in float64
with ``vs.stats.Moments`` (Chan et al.'s merge), so the result does not depend on how the data
is split into batches. ``running_var`` is the population variance of the data seen: on that
data the eval-mode layer output has per-channel mean 0 and variance var / (var + eps). Under
``torch.distributed`` with world size > 1 the statistics are merged exactly across ranks.

    >>> import torch, vitalstats as vs
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    >>> data = [torch.randn(16, 4) for _ in range(5)]
    >>> vs.nn.recompute_bn_stats(model, data, num_batches=5)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch

from vitalstats.nn.batchnorm import _BatchNorm

__all__ = ["recompute_bn_stats"]

InputsFrom = Literal["train", "eval"]


def _is_batchnorm(module: torch.nn.Module) -> bool:
    """torch's or our BatchNorm (any subclass, SyncBatchNorm included) with running buffers."""
    is_bn = isinstance(module, torch.nn.modules.batchnorm._BatchNorm | _BatchNorm)
    return is_bn and module.running_mean is not None and module.running_var is not None


def _default_forward(model: torch.nn.Module, batch: Any) -> Any:
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, list | tuple):
        return model(batch[0])  # (inputs, targets) pairs
    return model(batch)


def _collect(
    model: torch.nn.Module,
    layers: list[torch.nn.Module],
    data: Iterable[Any],
    num_batches: int,
    forward: Callable[[torch.nn.Module, Any], Any],
) -> tuple[list[Any], int]:
    """One pass over ``data``: Moments of each layer's input; returns (moments, batches run)."""
    from vitalstats.stats import Moments

    moments = [None] * len(layers)

    def hook_for(index: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if moments[index] is None:
                moments[index] = Moments(dims=(0, *range(2, x.dim())))
            moments[index].update(x)

        return hook

    handles = [layer.register_forward_pre_hook(hook_for(i)) for i, layer in enumerate(layers)]
    batches = 0
    try:
        with torch.no_grad():
            for batch in itertools.islice(data, num_batches):
                forward(model, batch)
                batches += 1
    finally:
        for handle in handles:
            handle.remove()
    return moments, batches


def _assign(layer: torch.nn.Module, moments: Any, group: Any) -> None:
    if moments is None:
        raise RuntimeError(
            f"recompute_bn_stats: {type(layer).__name__}({layer.num_features}) was never "
            "called on the data. Fix: pass data that reaches every BatchNorm, or a forward "
            "function that calls the model the way training does."
        )
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        moments.all_reduce(group)
    running_mean, running_var = layer.running_mean, layer.running_var
    running_mean.copy_(moments.mean.to(running_mean.device, running_mean.dtype))
    running_var.copy_(moments.var(unbiased=False).to(running_var.device, running_var.dtype))


def recompute_bn_stats(
    model: torch.nn.Module,
    data: Iterable[Any],
    num_batches: int = 200,
    *,
    inputs_from: InputsFrom = "train",
    forward: Callable[[torch.nn.Module, Any], Any] | None = None,
    group: Any = None,
) -> None:
    """Set every BatchNorm's running statistics to the exact statistics of its input over
    up to ``num_batches`` batches of ``data``; restores each module's train/eval mode and
    leaves ``num_batches_tracked`` and the weights untouched.

    ``inputs_from="train"`` (one pass, the fvcore/PreciseBN convention): the model runs in
    training mode, so each BatchNorm's input is what it sees in training (upstream BatchNorms
    normalise with batch statistics; dropout is active). ``"eval"``: one pass per BatchNorm,
    in call order, with the model in eval mode and the upstream layers already recomputed,
    so on this data every eval-mode BatchNorm output is standardised exactly. A batch is
    passed as ``model(batch)``, ``model(batch[0])`` for a tuple/list, ``model(**batch)`` for a
    dict, unless ``forward(model, batch)`` is given. A re-iterable ``data`` (a list or a
    DataLoader) is needed for ``"eval"``.
    """
    if inputs_from not in ("train", "eval"):
        raise ValueError(
            f"recompute_bn_stats: inputs_from must be 'train' or 'eval', got {inputs_from!r}"
        )
    if num_batches < 1:
        raise ValueError(f"recompute_bn_stats: num_batches must be >= 1, got {num_batches}")
    forward = forward or _default_forward
    layers = [m for m in model.modules() if _is_batchnorm(m)]
    if not layers:
        return
    modes = {module: module.training for module in model.modules()}
    counts = [layer.num_batches_tracked.clone() for layer in layers
              if layer.num_batches_tracked is not None]  # fmt: skip
    try:
        if inputs_from == "train":
            model.train()
            moments, batches = _collect(model, layers, data, num_batches, forward)
            _require_batches(batches)
            for layer, layer_moments in zip(layers, moments, strict=True):
                _assign(layer, layer_moments, group)
        else:
            model.eval()
            for layer in _call_order(model, layers, data, forward):
                (layer_moments,), batches = _collect(model, [layer], data, num_batches, forward)
                _require_batches(batches)
                _assign(layer, layer_moments, group)
    finally:
        for module, training in modes.items():
            module.training = training
        tracked = [layer for layer in layers if layer.num_batches_tracked is not None]
        for layer, count in zip(tracked, counts, strict=True):
            layer.num_batches_tracked.copy_(count)


def _require_batches(batches: int) -> None:
    if batches == 0:
        raise ValueError(
            "recompute_bn_stats: data yielded no batches. Fix: pass a non-empty iterable."
        )


def _call_order(
    model: torch.nn.Module,
    layers: list[torch.nn.Module],
    data: Iterable[Any],
    forward: Callable[[torch.nn.Module, Any], Any],
) -> list[torch.nn.Module]:
    """The layers in the order one forward pass calls them (never-called ones last)."""
    order: list[torch.nn.Module] = []
    handles = [
        layer.register_forward_pre_hook(
            lambda m, _args: order.append(m) if m not in order else None
        )
        for layer in layers
    ]
    try:
        with torch.no_grad():
            for batch in itertools.islice(data, 1):
                forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return order + [layer for layer in layers if layer not in order]
