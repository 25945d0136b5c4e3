"""Convert a model's normalisation layers between torch.nn and vitalstats.nn, in place.

    >>> import torch, vitalstats as vs
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    >>> model = vs.nn.swap_norm_layers(model, to="vitalstats")
    >>> type(model[1]).__module__
    'vitalstats.nn.batchnorm'

The new layer takes over the old one's Parameter and buffer *objects* (so an optimiser built
before the swap keeps working), its train/eval mode, device and dtype. Only exact types are
converted (a subclass such as BatchRenorm has no torch twin and is left alone; so are lazy
layers, which become their eager class on the first forward); hooks registered on the old
layer are not carried over.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from vitalstats.nn import batchnorm, instancenorm, normalization

__all__ = ["swap_norm_layers"]

Target = Literal["vitalstats", "torch"]


def _pairs() -> list[tuple[type[torch.nn.Module], type[torch.nn.Module]]]:
    """(torch class, vitalstats class) twins."""
    pairs: list[tuple[type[torch.nn.Module], type[torch.nn.Module]]] = [
        (torch.nn.BatchNorm1d, batchnorm.BatchNorm1d),
        (torch.nn.BatchNorm2d, batchnorm.BatchNorm2d),
        (torch.nn.BatchNorm3d, batchnorm.BatchNorm3d),
        (torch.nn.InstanceNorm1d, instancenorm.InstanceNorm1d),
        (torch.nn.InstanceNorm2d, instancenorm.InstanceNorm2d),
        (torch.nn.InstanceNorm3d, instancenorm.InstanceNorm3d),
        (torch.nn.LayerNorm, normalization.LayerNorm),
        (torch.nn.GroupNorm, normalization.GroupNorm),
        (torch.nn.RMSNorm, normalization.RMSNorm),
    ]
    try:
        from vitalstats.nn.sync_batchnorm import SyncBatchNorm
    except ImportError:
        pass
    else:
        pairs.append((torch.nn.SyncBatchNorm, SyncBatchNorm))
    return pairs


def _constructor_args(layer: torch.nn.Module) -> dict[str, Any]:
    """The constructor arguments that rebuild ``layer``'s configuration."""
    has_bias = getattr(layer, "bias", None) is not None
    if isinstance(layer, torch.nn.LayerNorm | normalization.LayerNorm):
        return dict(
            normalized_shape=tuple(layer.normalized_shape),
            eps=layer.eps,
            elementwise_affine=layer.elementwise_affine,
            bias=has_bias or not layer.elementwise_affine,
        )
    if isinstance(layer, torch.nn.RMSNorm | normalization.RMSNorm):
        return dict(
            normalized_shape=tuple(layer.normalized_shape),
            eps=layer.eps,
            elementwise_affine=layer.elementwise_affine,
        )
    if isinstance(layer, torch.nn.GroupNorm | normalization.GroupNorm):
        return dict(
            num_groups=layer.num_groups,
            num_channels=layer.num_channels,
            eps=layer.eps,
            affine=layer.affine,
            bias=has_bias or not layer.affine,
        )
    args = dict(
        num_features=layer.num_features,
        eps=layer.eps,
        momentum=layer.momentum,
        affine=layer.affine,
        track_running_stats=layer.track_running_stats,
        bias=has_bias or not layer.affine,
    )
    if hasattr(layer, "process_group"):
        args["process_group"] = layer.process_group
    return args


def _convert(layer: torch.nn.Module, target_cls: type[torch.nn.Module], name: str) -> Any:
    new = target_cls(**_constructor_args(layer), device="meta")
    new._parameters = layer._parameters  # the same Parameter objects: optimisers keep working
    new._buffers = layer._buffers
    new._non_persistent_buffers_set = set(layer._non_persistent_buffers_set)
    new.train(layer.training)
    if hasattr(new, "layer_name"):
        new.layer_name = name or None
    return new


def swap_norm_layers(model: torch.nn.Module, to: Target = "vitalstats") -> torch.nn.Module:
    """Replace every torch.nn norm layer by its vitalstats twin (``to="vitalstats"``) or back
    (``to="torch"``), in place; returns ``model`` (or its replacement if ``model`` is itself a
    norm layer). Parameters, buffers, mode, device and dtype are preserved."""
    if to not in ("vitalstats", "torch"):
        raise ValueError(f"swap_norm_layers: to must be 'vitalstats' or 'torch', got {to!r}")
    pairs = _pairs()
    mapping = {src: dst for src, dst in pairs} if to == "vitalstats" else {d: s for s, d in pairs}

    def replacement(module: torch.nn.Module, name: str) -> torch.nn.Module | None:
        target = mapping.get(type(module))
        return None if target is None else _convert(module, target, name)

    root = replacement(model, "")
    if root is not None:
        return root
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent._modules.items()):
            if child is None:
                continue
            qualified = f"{parent_name}.{child_name}" if parent_name else child_name
            new = replacement(child, qualified)
            if new is not None:
                parent._modules[child_name] = new
    return model
