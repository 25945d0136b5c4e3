"""Per-feature z-score: (x - mean) / std, with mean and std learnt in one streaming pass."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from vitalstats.data.base import NanPolicy, StreamingScaler
from vitalstats.stats import Moments


class Standardize(StreamingScaler):
    """z = (x - mean) / max(std, min_std) per feature; ``inverse`` undoes it.

    ``std`` is the population standard deviation (ddof = 0, like scikit-learn's
    ``StandardScaler``), stored unfloored. The divisor is floored at ``min_std`` (default 1e-6,
    in the data's units): a feature that is constant in the fitting data maps to 0 instead of
    NaN, and ``fit`` warns with the indices of such features (scikit-learn divides them by 1.0
    silently). ``mean``, ``std`` (float64) and ``count`` are buffers, so they travel in
    ``state_dict``.

        scaler = vs.data.Standardize().fit(loader)      # (N, F) batches or (x, y) tuples
        z = scaler(x)                                   # same shape and dtype as x
    """

    _buffer_names = ("mean", "std")

    def __init__(
        self,
        feature_dims: int | Sequence[int] = 1,
        min_std: float = 1e-6,
        nan_policy: NanPolicy = "raise",
    ) -> None:
        super().__init__(feature_dims, nan_policy)
        if not min_std > 0:
            raise ValueError(f"Standardize: min_std={min_std} must be > 0 (it floors the divisor)")
        self.min_std = float(min_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = self._require_fitted(x)
        mean = self._broadcast(self.mean, x, dims)
        std = self._broadcast(self.std.clamp(min=self.min_std), x, dims)
        return (x - mean) / std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Undo ``forward``: z * max(std, min_std) + mean."""
        dims = self._require_fitted(z)
        mean = self._broadcast(self.mean, z, dims)
        std = self._broadcast(self.std.clamp(min=self.min_std), z, dims)
        return z * std + mean

    def _refresh_buffers(self, moments: Moments) -> None:
        self.mean = moments.mean.clone()
        self.std = moments.std()

    def _restore_moments(self, x: torch.Tensor, feature_dims: tuple[int, ...]) -> Moments:
        moments = self._new_moments(x, feature_dims)
        if not self.is_fitted:
            return moments
        state = moments.state_dict()  # continue from loaded buffers: M2 = std^2 * count
        state.update(
            ndim=x.dim(),
            count=self.count.clone(),
            mean=self.mean.clone(),
            m2=self.std.square() * self.count,
            min=torch.full_like(self.mean, float("inf")),
            max=torch.full_like(self.mean, float("-inf")),
            nonfinite=torch.zeros_like(self.count),
        )
        return Moments.from_state_dict(state)

    def _warn_degenerate(self) -> None:
        small = torch.nonzero(self.std < self.min_std).tolist()
        if small:
            shown = [tuple(i) if len(i) > 1 else i[0] for i in small[:20]]
            more = f" and {len(small) - 20} more" if len(small) > 20 else ""
            warnings.warn(
                f"Standardize: features {shown}{more} have std below min_std={self.min_std} "
                "(constant in the fitting data); they are divided by min_std, so any variation "
                "they show later is amplified. Drop these features from the input",
                stacklevel=3,
            )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, min_std={self.min_std}"
