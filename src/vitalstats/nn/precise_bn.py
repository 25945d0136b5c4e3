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
from collections.abc import Callable, Iterable, Iterator
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
    lockstep: bool = False,
    group: Any = None,
) -> tuple[list[Any], int]:
    """One pass over ``data``: Moments of each layer's input; returns (moments, batches run).

    ``lockstep``: the ranks of ``group`` must run the same number of batches."""
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
    source = itertools.islice(data, num_batches)
    if lockstep:
        source = _in_lockstep(source, group)
    try:
        with torch.no_grad():
            for batch in source:
                forward(model, batch)
                batches += 1
    finally:
        for handle in handles:
            handle.remove()
    return moments, batches


def _distributed_group_size(group: Any) -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def _flag_device(group: Any) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _in_lockstep(batches: Iterable[Any], group: Any) -> Iterator[Any]:
    """Yield batches while every rank still has one (an all-reduce MIN of a flag per batch).

    Needed when the forward itself runs collectives (SyncBatchNorm in training mode): a rank
    with more batches than the others would otherwise wait forever in its next collective.
    One tiny collective and host read per batch; this is not a training hot path."""
    import torch.distributed as dist

    iterator = iter(batches)
    device = _flag_device(group)
    while True:
        batch = next(iterator, _EXHAUSTED)
        flag = torch.tensor([0 if batch is _EXHAUSTED else 1], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
        if int(flag.item()) == 0:
            return
        yield batch


_EXHAUSTED = object()


def _agree_across_ranks(
    layers: list[torch.nn.Module], moments: list[Any], batches: int, group: Any
) -> None:
    """Raise the same error on every rank when some rank saw no batch or never called a layer
    (raising on one rank alone would leave the others waiting in the merge's collective)."""
    import torch.distributed as dist

    seen = [batches > 0] + [m is not None for m in moments]
    flags = torch.tensor(seen, dtype=torch.int32, device=_flag_device(group))
    dist.all_reduce(flags, op=dist.ReduceOp.MIN, group=group)
    everywhere = flags.tolist()
    if not everywhere[0]:
        raise ValueError(
            "recompute_bn_stats: data yielded no batches on at least one rank. Fix: give every "
            "rank a non-empty shard of the data."
        )
    for layer, ok in zip(layers, everywhere[1:], strict=True):
        if not ok:
            raise RuntimeError(
                f"recompute_bn_stats: {type(layer).__name__}({layer.num_features}) was never "
                "called on at least one rank. Fix: pass data that reaches every BatchNorm on "
                "every rank, or a forward function that calls the model the way training does."
            )


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
        distributed = _distributed_group_size(group) > 1
        if inputs_from == "train":
            model.train()
            # SyncBatchNorm runs collectives inside its training forward: keep ranks in step.
            syncs = distributed and any(_runs_collectives(layer) for layer in layers)
            moments, batches = _collect(
                model, layers, data, num_batches, forward, lockstep=syncs, group=group
            )
            if distributed:
                _agree_across_ranks(layers, moments, batches, group)
            _require_batches(batches)
            for layer, layer_moments in zip(layers, moments, strict=True):
                _assign(layer, layer_moments, group)
        else:
            model.eval()
            for layer in _call_order(model, layers, data, forward):
                (layer_moments,), batches = _collect(model, [layer], data, num_batches, forward)
                if distributed:
                    _agree_across_ranks([layer], [layer_moments], batches, group)
                _require_batches(batches)
                _assign(layer, layer_moments, group)
    finally:
        for module, training in modes.items():
            module.training = training
        tracked = [layer for layer in layers if layer.num_batches_tracked is not None]
        for layer, count in zip(tracked, counts, strict=True):
            layer.num_batches_tracked.copy_(count)


def _runs_collectives(layer: torch.nn.Module) -> bool:
    from vitalstats.nn.sync_batchnorm import SyncBatchNorm

    return isinstance(layer, torch.nn.SyncBatchNorm | SyncBatchNorm)


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
