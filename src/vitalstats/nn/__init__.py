"""Reference normalisation layers, drop-in compatible with ``torch.nn``.

``vs.nn.functional`` holds the maths (autograd Functions with closed-form backward); the
modules own parameters and buffers. Beyond torch: ``BatchRenorm1d/2d``, ``recompute_bn_stats``
(PreciseBN), the non-finite batch guard, ``swap_norm_layers``.
"""

from __future__ import annotations

from vitalstats.nn import functional
from vitalstats.nn._guard import NonFiniteBatchWarning
from vitalstats.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from vitalstats.nn.batchrenorm import BatchRenorm1d, BatchRenorm2d
from vitalstats.nn.instancenorm import InstanceNorm1d, InstanceNorm2d
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
    "LayerNorm",
    "NonFiniteBatchWarning",
    "RMSNorm",
    "functional",
    "recompute_bn_stats",
    "swap_norm_layers",
]

from vitalstats.nn.buffers import check_buffer_divergence, sync_buffers
from vitalstats.nn.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm

__all__ += ["SyncBatchNorm", "check_buffer_divergence", "convert_sync_batchnorm", "sync_buffers"]
