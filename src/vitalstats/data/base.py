"""Streaming fit shared by the input scalers: batches in, per-feature ``Moments`` out.

``fit(data)`` accepts a tensor (one batch), or any iterable of tensors or of ``(x, y, ...)``
tuples/lists (a ``DataLoader``); the first element of a tuple is the input. One pass, no
matter how large the data. ``feature_dims`` are the dimensions that index features (dim 1:
the F of ``(N, F)`` or the C of ``(N, C, H, W)``); every other dim is reduced.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from vitalstats.stats import Moments

NanPolicy = Literal["raise", "omit"]


class StreamingScaler(nn.Module):
    """Base class: owns ``feature_dims``, ``nan_policy``, the ``Moments`` and the ``count``
    buffer. Subclasses define ``_buffer_names``, ``_refresh_buffers`` and ``_restore_moments``.
    """

    _buffer_names: tuple[str, ...] = ()

    def __init__(self, feature_dims: int | Sequence[int] = 1, nan_policy: NanPolicy = "raise"):
        super().__init__()
        if nan_policy not in ("raise", "omit"):
            raise ValueError(
                f"{type(self).__name__}: nan_policy={nan_policy!r}; expected 'raise' (error on "
                "NaN/Inf in fitting data) or 'omit' (leave them out of the statistics)"
            )
        self.feature_dims = (
            (feature_dims,) if isinstance(feature_dims, int) else tuple(feature_dims)
        )
        self.nan_policy: NanPolicy = nan_policy
        self._moments: Moments | None = None
        self._moments_device = torch.device("cpu")
        self._samples_seen = 0  # leading-dim rows, for error messages
        self.register_buffer("count", torch.zeros(0, dtype=torch.int64))
        for name in self._buffer_names:
            self.register_buffer(name, torch.zeros(0, dtype=torch.float64))

    # ----------------------------------------------------------------------------- fitting
    def fit(self, data: torch.Tensor | Iterable[Any]) -> StreamingScaler:
        """Reset, then fit on ``data`` in one streaming pass; returns self.

        If a batch is refused (NaN/Inf, a changed feature count), the scaler is left unfitted
        rather than fitted on the batches before it.
        """
        self._reset()
        batches = [data] if isinstance(data, torch.Tensor) else data
        try:
            for batch in batches:
                self.partial_fit(batch)
        except Exception:
            self._reset()
            raise
        if self._moments is None:
            raise ValueError(f"{type(self).__name__}.fit: the data held no batches")
        self._warn_degenerate()
        return self

    def partial_fit(self, batch: torch.Tensor | Sequence[Any]) -> StreamingScaler:
        """Add one batch (a tensor or an ``(x, y, ...)`` tuple) to the statistics; returns self."""
        x = _input_of(batch, type(self).__name__)
        feature_dims = self._normalised_feature_dims(x)
        self._check_features(x, feature_dims)
        if self._moments is None or self._moments_device != self.count.device:
            # first batch, or the module moved (.to(device)): continue from the buffers
            self._moments = self._restore_moments(x, feature_dims)
            self._moments_device = self.count.device
        if self.nan_policy == "raise":
            self._raise_on_nonfinite(x)
        self._moments.update(x.detach().to(self.count.device))
        self._samples_seen += x.shape[0] if x.dim() else 1
        self.count = self._moments.count.clone()
        self._refresh_buffers(self._moments)
        return self

    # ----------------------------------------------------------------------------- helpers
    def _reset(self) -> None:
        """Forget every statistic: unfitted, as after construction."""
        self._moments, self._samples_seen = None, 0
        self.count = torch.zeros(0, dtype=torch.int64, device=self.count.device)
        for name in self._buffer_names:
            setattr(self, name, torch.zeros(0, dtype=torch.float64, device=self.count.device))

    @property
    def is_fitted(self) -> bool:
        return self.count.numel() > 0

    def _require_fitted(self, x: torch.Tensor) -> tuple[int, ...]:
        name = type(self).__name__
        if not self.is_fitted:
            raise RuntimeError(
                f"{name}: not fitted; call fit(data) or partial_fit(batch) first, or load a "
                "state_dict from a fitted scaler"
            )
        feature_dims = self._normalised_feature_dims(x)
        self._check_features(x, feature_dims)
        return feature_dims

    def _broadcast(self, statistic: torch.Tensor, x: torch.Tensor, dims: tuple[int, ...]):
        """``statistic`` (feature shape) viewed to broadcast against ``x``, in x's dtype."""
        shape = [x.shape[d] if d in dims else 1 for d in range(x.dim())]
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return statistic.to(device=x.device, dtype=dtype).reshape(shape)

    def _normalised_feature_dims(self, x: torch.Tensor) -> tuple[int, ...]:
        if any(not -x.dim() <= d < x.dim() for d in self.feature_dims):
            raise ValueError(
                f"{type(self).__name__}(feature_dims={self.feature_dims}): input of shape "
                f"{tuple(x.shape)} has no such dim; pass (N, F) or (N, C, ...) input or change "
                "feature_dims"
            )
        return tuple(sorted(d % x.dim() for d in self.feature_dims))

    def _check_features(self, x: torch.Tensor, feature_dims: tuple[int, ...]) -> None:
        got = tuple(x.shape[d] for d in feature_dims)
        expected = tuple(self.count.shape)
        if self.is_fitted and got != expected:
            raise ValueError(
                f"{type(self).__name__}: expected {expected} features along dims {feature_dims}, "
                f"got {got} (input shape {tuple(x.shape)}); every batch must have the same "
                "feature count as the data the scaler was fitted on"
            )

    def _new_moments(self, x: torch.Tensor, feature_dims: tuple[int, ...]) -> Moments:
        reduce_dims = tuple(d for d in range(x.dim()) if d not in feature_dims)
        return Moments(reduce_dims, exclude_nonfinite=True)

    def _raise_on_nonfinite(self, x: torch.Tensor) -> None:
        # Fitting is a one-off pass, so reading one flag per batch on the host is acceptable.
        finite = torch.isfinite(x)
        if bool(finite.all()):
            return
        bad = torch.nonzero(~finite)
        first = tuple(bad[0].tolist())
        row = self._samples_seen + first[0] if first else self._samples_seen
        raise ValueError(
            f"{type(self).__name__}.fit: {bad.shape[0]} NaN/Inf values in the fitting data; "
            f"the first at index {first} of this batch (sample {row} of the stream). Clean the "
            "data, or pass nan_policy='omit' to leave them out of the statistics"
        )

    def _warn_degenerate(self) -> None:
        """Subclasses warn about constant features here (after fit)."""

    def _restore_moments(self, x: torch.Tensor, feature_dims: tuple[int, ...]) -> Moments:
        raise NotImplementedError

    def _refresh_buffers(self, moments: Moments) -> None:
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Buffers start empty (the feature count is learnt by fit); take the saved shapes.
        for name in ("count", *self._buffer_names):
            incoming = state_dict.get(prefix + name)
            if isinstance(incoming, torch.Tensor) and incoming.shape != self._buffers[name].shape:
                self._buffers[name] = torch.empty_like(incoming, device=self._buffers[name].device)
        self._moments = None  # rebuilt from the loaded buffers on the next partial_fit
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        features = tuple(self.count.shape) if self.is_fitted else "unfitted"
        return (
            f"feature_dims={self.feature_dims}, features={features}, nan_policy={self.nan_policy!r}"
        )


def _input_of(batch: Any, owner: str) -> torch.Tensor:
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(
            f"{owner}.fit: expected a tensor or an (x, y, ...) tuple whose first item is a "
            f"tensor, got {type(batch).__name__}"
        )
    return batch
