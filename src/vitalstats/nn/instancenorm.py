"""InstanceNorm1d/2d/3d: drop-in for torch.nn's; statistics per (sample, channel) over space.

Defaults as torch: ``affine=False``, ``track_running_stats=False``. With running statistics the
buffers get the batch-average of the per-instance mean and unbiased variance, as in torch.
Unbatched input ((C, L) for 1d, (C, H, W) for 2d, (C, D, H, W) for 3d) is accepted like
torch does; the output is contiguous whatever the input's layout (torch's as well). As in
torch, a channel count that differs from ``num_features`` is an error only when the layer has
per-channel parameters or buffers (otherwise num_features is unused: a warning).

    >>> import torch, vitalstats as vs
    >>> vs.nn.InstanceNorm2d(3)(torch.randn(2, 3, 8, 8)).shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor

from vitalstats.nn._errors import check_float_input, describe_shape
from vitalstats.nn.batchnorm import _NormBase
from vitalstats.nn.functional import instance_norm

__all__ = ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class _InstanceNorm(_NormBase):
    _spatial_dims = 1

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # torch's habit: checkpoints from before version 1 carried running statistics even
        # with track_running_stats=False; report and drop them
        if local_metadata.get("version") is None and not self.track_running_stats:
            keys = [prefix + n for n in ("running_mean", "running_var") if prefix + n in state_dict]
            if keys:
                error_msgs.append(
                    f"Unexpected running stats buffer(s) {keys} for {type(self).__name__} with "
                    "track_running_stats=False (a checkpoint from before torch 0.4 may have "
                    "them). Fix: remove these keys, or build the layer with "
                    "track_running_stats=True if the statistics are needed."
                )
                for key in keys:
                    state_dict.pop(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _check_input_dim(self, input: Tensor) -> None:
        label = self.layer_label()
        check_float_input(input, label, min_dims=1)
        batched_dims = self._spatial_dims + 2
        if input.dim() not in (batched_dims - 1, batched_dims):
            raise ValueError(
                f"{label}: expected {batched_dims - 1}D (unbatched) or {batched_dims}D input "
                f"(got {input.dim()}D input of shape {describe_shape(input)}). Fix: reshape "
                "the input, or use the InstanceNorm made for this many dims."
            )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        label = self.layer_label()
        feature_dim = input.dim() - self._spatial_dims - 1
        channels = input.shape[feature_dim]
        if channels != self.num_features:
            message = (
                f"{label}: expected input's size at dim={feature_dim} to match num_features "
                f"({self.num_features}), but got: {channels} (input of shape "
                f"{describe_shape(input)}). Fix: num_features={channels}."
            )
            if self.affine or self.track_running_stats:
                raise ValueError(message)
            warnings.warn(
                f"{message} num_features is unused here (affine=False, "
                "track_running_stats=False): you can also silence this warning by not passing "
                "it.",
                stacklevel=2,
            )
        unbatched = input.dim() == self._spatial_dims + 1
        batched = input.unsqueeze(0) if unbatched else input
        output = instance_norm(
            batched,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
        )
        return output.squeeze(0) if unbatched else output


class InstanceNorm1d(_InstanceNorm):
    """InstanceNorm over (N, C, L) or (C, L): per (sample, channel) statistics over L."""

    _spatial_dims = 1


class InstanceNorm2d(_InstanceNorm):
    """InstanceNorm over (N, C, H, W) or (C, H, W): per (sample, channel) over H, W."""

    _spatial_dims = 2


class InstanceNorm3d(_InstanceNorm):
    """InstanceNorm over (N, C, D, H, W) or (C, D, H, W): per (sample, channel) over D, H, W."""

    _spatial_dims = 3
