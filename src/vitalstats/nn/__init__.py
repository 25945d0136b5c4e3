"""Normalisation layers, drop-in compatible with ``torch.nn`` (torch's own module tests pass).

``vs.nn.functional`` holds the functions; the maths, each backward formula beside its forward,
is in ``_batch_norm.py``, ``_per_sample.py`` (LayerNorm, GroupNorm) and ``_rms_norm.py``; the
modules own parameters and buffers. Beyond torch: ``batch_mean``/``batch_var`` on every
BatchNorm, the non-finite batch guard, ``BatchRenorm1d/2d``, ``recompute_bn_stats``
(PreciseBN), ``swap_norm_layers``, SyncBatchNorm on gloo/CPU.
"""

from __future__ import annotations

from vitalstats.nn import functional
from vitalstats.nn._guard import NonFiniteBatchWarning
from vitalstats.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from vitalstats.nn.batchrenorm import BatchRenorm1d, BatchRenorm2d
from vitalstats.nn.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from vitalstats.nn.lazy import (
    LazyBatchNorm1d,
    LazyBatchNorm2d,
    LazyBatchNorm3d,
    LazyInstanceNorm1d,
    LazyInstanceNorm2d,
    LazyInstanceNorm3d,
)
from vitalstats.nn.normalization import GroupNorm, LayerNorm, RMSNorm
from vitalstats.nn.precise_bn import recompute_bn_stats
from vitalstats.nn.swap import swap_norm_layers

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "LazyInstanceNorm1d",
    "LazyInstanceNorm2d",
    "LazyInstanceNorm3d",
    "NonFiniteBatchWarning",
    "RMSNorm",
    "functional",
    "recompute_bn_stats",
    "swap_norm_layers",
]

from vitalstats.nn.buffers import check_buffer_divergence, sync_buffers
from vitalstats.nn.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

__all__ += ["SyncBatchNorm", "check_buffer_divergence", "convert_sync_batchnorm", "sync_buffers"]
