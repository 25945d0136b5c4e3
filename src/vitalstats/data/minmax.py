"""Per-feature min-max scaling to a target range, learnt in one streaming pass."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from vitalstats.data.base import NanPolicy, StreamingScaler
from vitalstats.stats import Moments


class MinMaxScale(StreamingScaler):
    """y = low + (x - data_min) / max(data_max - data_min, min_range) * (high - low).

    Matches scikit-learn's ``MinMaxScaler(feature_range=(low, high))`` on fitted data.
    The divisor is floored at ``min_range`` (default 1e-12, in the data's units): a feature
    that is constant in the fitting data maps to ``low`` instead of NaN, and ``fit`` warns with
    the indices of such features (scikit-learn divides them by 1.0 silently). ``data_min``, ``data_max`` (float64) and ``count``
    are buffers, so they travel in ``state_dict``.
    """

    _buffer_names = ("data_min", "data_max")

    def __init__(
        self,
        feature_range: tuple[float, float] = (0.0, 1.0),
        feature_dims: int | Sequence[int] = 1,
        min_range: float = 1e-12,
        nan_policy: NanPolicy = "raise",
    ) -> None:
        super().__init__(feature_dims, nan_policy)
        low, high = (float(v) for v in feature_range)
        if not low < high:
            raise ValueError(
                f"MinMaxScale: feature_range={feature_range} must be (low, high) with low < high"
            )
        if not min_range > 0:
            raise ValueError(f"MinMaxScale: min_range={min_range} must be > 0")
        self.feature_range = (low, high)
        self.min_range = float(min_range)

    def _scale(self) -> torch.Tensor:
        low, high = self.feature_range
        return (high - low) / (self.data_max - self.data_min).clamp(min=self.min_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = self._require_fitted(x)
        scale = self._broadcast(self._scale(), x, dims)
        offset = self._broadcast(self.feature_range[0] - self.data_min * self._scale(), x, dims)
        return x * scale + offset

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Undo ``forward``: (y - low) / scale + data_min."""
        dims = self._require_fitted(y)
        scale = self._broadcast(self._scale(), y, dims)
        return (y - self.feature_range[0]) / scale + self._broadcast(self.data_min, y, dims)

    def _refresh_buffers(self, moments: Moments) -> None:
        self.data_min = moments.min.clone()
        self.data_max = moments.max.clone()

    def _restore_moments(self, x: torch.Tensor, feature_dims: tuple[int, ...]) -> Moments:
        moments = self._new_moments(x, feature_dims)
        if not self.is_fitted:
            return moments
        state = moments.state_dict()  # continue from loaded buffers (mean/var not kept here)
        zeros = torch.zeros_like(self.data_min)
        state.update(
            ndim=x.dim(),
            count=self.count.clone(),
            mean=zeros,
            m2=zeros.clone(),
            min=self.data_min.clone(),
            max=self.data_max.clone(),
            nonfinite=torch.zeros_like(self.count),
        )
        return Moments.from_state_dict(state)

    def _warn_degenerate(self) -> None:
        small = torch.nonzero((self.data_max - self.data_min) < self.min_range).tolist()
        if small:
            shown = [tuple(i) if len(i) > 1 else i[0] for i in small[:20]]
            more = f" and {len(small) - 20} more" if len(small) > 20 else ""
            warnings.warn(
                f"MinMaxScale: features {shown}{more} have a range below min_range="
                f"{self.min_range} (constant in the fitting data); they are divided by "
                "min_range, so any variation they show later is amplified. Drop these features "
                "from the input",
                stacklevel=3,
            )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, feature_range={self.feature_range}"
