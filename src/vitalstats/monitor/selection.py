"""Which modules and parameters the monitor watches, and unwrapping DDP / torch.compile."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Sequence

from torch import nn

Patterns = str | Sequence[str] | None
ROOT_LAYER_NAME = "model"  # layer name of a model that is itself one leaf module ("" = run)


FSDP1_ERROR = (
    "vs.Monitor: this model is wrapped in FullyShardedDataParallel (FSDP1), which flattens "
    "its parameters into FlatParameters, so per-parameter statistics and the names users see "
    "are gone. Use FSDP2 instead: `from torch.distributed.fsdp import fully_shard; "
    "fully_shard(layer) for each block, then fully_shard(model)`; vs.Monitor measures its "
    "DTensor shards and merges them exactly across ranks."
)


def unwrap(model: nn.Module) -> tuple[nn.Module, bool]:
    """(the module whose submodules carry the names users see, was it torch.compile'd).

    ``torch.compile`` wraps in ``OptimizedModule`` (``._orig_mod``); DDP and DataParallel
    wrap in ``.module``. Names are those of the inner model (``net.0.weight``). FSDP2
    (``fully_shard``) keeps the module tree and names, so it needs no unwrapping; FSDP1 gets
    a TypeError naming FSDP2."""
    compiled = False
    while True:
        if type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
            model, compiled = model._orig_mod, True
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif _is_fsdp1(model):
            raise TypeError(FSDP1_ERROR)
        else:
            return model, compiled


def _is_fsdp1(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # torch built without distributed
        return False
    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def _as_patterns(patterns: Patterns) -> tuple[str, ...]:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    return tuple(patterns)


def _wanted(name: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
        return False
    return not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)


def select_layers(
    model: nn.Module,
    include: Patterns = None,
    exclude: Patterns = None,
    types: Sequence[type[nn.Module]] | None = None,
) -> list[tuple[str, nn.Module]]:
    """Leaf modules (no children) whose qualified name matches an ``include`` glob (all when
    None), no ``exclude`` glob, and, when ``types`` is given, is an instance of one of them."""
    include_t, exclude_t = _as_patterns(include), _as_patterns(exclude)
    chosen = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue
        name = name or ROOT_LAYER_NAME  # the model itself is a single layer
        if types is not None and not isinstance(module, tuple(types)):
            continue
        if _wanted(name, include_t, exclude_t):
            chosen.append((name, module))
    if not chosen:
        warnings.warn(
            f"vs.Monitor: no layer matched include={include!r}, exclude={exclude!r}, "
            f"types={types!r}; only run-level and parameter statistics will be recorded",
            stacklevel=3,
        )
    return chosen


def select_parameters(
    model: nn.Module, include: Patterns = None, exclude: Patterns = None
) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters whose own name or whose module's name passes the patterns."""
    include_t, exclude_t = _as_patterns(include), _as_patterns(exclude)
    chosen = []
    for name, p in model.named_parameters():
        module_name = name.rpartition(".")[0]
        if not p.requires_grad:
            continue
        names = (name, module_name) if module_name else (name,)
        included = not include_t or any(
            fnmatch.fnmatchcase(n, pattern) for n in names for pattern in include_t
        )
        excluded = any(fnmatch.fnmatchcase(n, pattern) for n in names for pattern in exclude_t)
        if included and not excluded:
            chosen.append((name, p))
    return chosen


def module_depth(name: str) -> int:
    """Nesting depth of a qualified module name (0 for children of the root)."""
    return name.count(".")
