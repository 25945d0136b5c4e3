"""LazyBatchNorm1d/2d/3d and LazyInstanceNorm1d/2d/3d: torch's lazy twins.

``num_features`` is inferred from the channel dim on the first forward (``input.shape[1]``,
torch's rule; dim 0 for unbatched InstanceNorm input, where torch reads dim 1 and fails); the parameters and buffers are materialised then and the
module becomes the eager vitalstats class (``cls_to_become``), as torch's lazy modules do.
Defaults are torch's: ``affine=True, track_running_stats=True`` for all six (so a
LazyInstanceNorm tracks running statistics, unlike an eager InstanceNorm).

    >>> import torch, vitalstats as vs
    >>> bn = vs.nn.LazyBatchNorm2d()
    >>> _ = bn(torch.randn(4, 8, 5, 5))
    >>> type(bn).__name__, bn.num_features
    ('BatchNorm2d', 8)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from vitalstats.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm, _NormBase
from vitalstats.nn.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, _InstanceNorm

__all__ = [
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "LazyInstanceNorm1d",
    "LazyInstanceNorm2d",
    "LazyInstanceNorm3d",
]


class _LazyNormBase(LazyModuleMixin, _NormBase):
    """torch's ``_LazyNormBase``: uninitialised parameters and buffers until the first input."""

    weight: UninitializedParameter  # type: ignore[assignment]
    bias: UninitializedParameter  # type: ignore[assignment]

    def __init__(
        self,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
        **extra: Any,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        # affine and track_running_stats False first: no tensors that would be replaced
        super().__init__(0, eps, momentum, False, False, device, dtype, bias=False, **extra)
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = UninitializedParameter(**factory_kwargs)
            if bias:
                self.bias = UninitializedParameter(**factory_kwargs)
        if track_running_stats:
            self.running_mean = UninitializedBuffer(**factory_kwargs)
            self.running_var = UninitializedBuffer(**factory_kwargs)
            self.num_batches_tracked = torch.tensor(0, dtype=torch.long, device=device)

    def _feature_dim(self, input: Tensor) -> int:
        return 1

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.num_features != 0:
            super().reset_parameters()

    def initialize_parameters(self, input: Tensor) -> None:  # type: ignore[override]
        if not self.has_uninitialized_params():
            return
        self.num_features = input.shape[self._feature_dim(input)]
        if self.affine:
            self.weight.materialize((self.num_features,))
            if self.bias is not None:
                self.bias.materialize((self.num_features,))
        if self.track_running_stats:
            self.running_mean.materialize((self.num_features,))
            self.running_var.materialize((self.num_features,))
        self.reset_parameters()


class LazyBatchNorm1d(_LazyNormBase, _BatchNorm):
    """``vs.nn.BatchNorm1d`` with ``num_features`` inferred from ``input.shape[1]``."""

    cls_to_become = BatchNorm1d  # type: ignore[assignment]
    _expected_dims = BatchNorm1d._expected_dims
    _input_layout = BatchNorm1d._input_layout


class LazyBatchNorm2d(_LazyNormBase, _BatchNorm):
    """``vs.nn.BatchNorm2d`` with ``num_features`` inferred from ``input.shape[1]``."""

    cls_to_become = BatchNorm2d  # type: ignore[assignment]
    _expected_dims = BatchNorm2d._expected_dims
    _input_layout = BatchNorm2d._input_layout


class LazyBatchNorm3d(_LazyNormBase, _BatchNorm):
    """``vs.nn.BatchNorm3d`` with ``num_features`` inferred from ``input.shape[1]``."""

    cls_to_become = BatchNorm3d  # type: ignore[assignment]
    _expected_dims = BatchNorm3d._expected_dims
    _input_layout = BatchNorm3d._input_layout


class _LazyInstanceNorm(_LazyNormBase, _InstanceNorm):
    """torch's defaults for the lazy InstanceNorms are _LazyNormBase's: affine=True and
    track_running_stats=True, unlike the eager InstanceNorm's False and False."""

    def _feature_dim(self, input: Tensor) -> int:
        """Dim 0 for unbatched input: torch reads dim 1 there (a spatial size), and then
        fails on its own module_db samples; we take the channel dim."""
        return input.dim() - self._spatial_dims - 1


class LazyInstanceNorm1d(_LazyInstanceNorm):
    """``vs.nn.InstanceNorm1d`` with ``num_features`` inferred from ``input.shape[1]``."""

    cls_to_become = InstanceNorm1d  # type: ignore[assignment]
    _spatial_dims = 1


class LazyInstanceNorm2d(_LazyInstanceNorm):
    """``vs.nn.InstanceNorm2d`` with ``num_features`` inferred from ``input.shape[1]``."""

    cls_to_become = InstanceNorm2d  # type: ignore[assignment]
    _spatial_dims = 2


class LazyInstanceNorm3d(_LazyInstanceNorm):
    """``vs.nn.InstanceNorm3d`` with ``num_features`` inferred from ``input.shape[1]``."""

    cls_to_become = InstanceNorm3d  # type: ignore[assignment]
    _spatial_dims = 3
