"""Streaming count, mean, variance, min and max over chosen dimensions.

    m = vs.stats.Moments(dims=(0, 2, 3))      # per-channel statistics of (N, C, H, W) batches
    for x in loader:
        m.update(x)                           # no host sync; an empty batch is a no-op
    m.mean, m.var(), m.std(unbiased=True), m.min, m.max, m.count, m.nonfinite

Each batch is reduced exactly (see ``vitalstats.stats.batch``) and merged into a float64 running
state with Chan et al.'s pairwise formula (``vitalstats.stats.merge``), so the result does not
depend on how the data was split into batches (up to float64 rounding), ``merge`` is
associative, and float32 data far from zero keeps its variance to about 1e-7 relative.
The state is a handful of float64 tensors of the kept dims' shape on the input's device.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from vitalstats.stats.batch import batch_moments
from vitalstats.stats.merge import chan_merge

_STATE_KEYS = ("count", "mean", "m2", "min", "max", "nonfinite")
_STATE_VERSION = 1


class Moments:
    """Count, mean, M2 (sum of squared deviations), min, max and NaN/Inf count of a stream.

    ``dims``: the dimensions reduced (int, sequence, or None for all); the statistics have
    the shape of the remaining dims. ``dims=()`` keeps every element (elementwise statistics
    over successive tensors). ``exclude_nonfinite`` (default True): NaN and +-Inf values are
    counted in ``nonfinite`` and left out of every other statistic; with False they propagate
    into mean and variance like ``torch.var_mean`` (NaN) and are also counted.
    """

    def __init__(
        self, dims: int | Sequence[int] | None = None, *, exclude_nonfinite: bool = True
    ) -> None:
        self._dims: tuple[int, ...] | None = _checked_dims(dims)
        self._exclude_nonfinite = bool(exclude_nonfinite)
        self._ndim: int | None = None
        self._state: dict[str, torch.Tensor] | None = None

    # ----------------------------------------------------------------------------- updating
    def update(self, x: torch.Tensor) -> Moments:
        """Add the values of ``x`` (any real dtype) to the statistics; returns self."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Moments.update expects a torch.Tensor, got {type(x).__name__}")
        x = x.detach()
        reduce_dims, kept_shape = self._layout(x)
        if self._state is None:
            self._state = _empty_state(kept_shape, x.device)
        else:
            self._check_compatible(kept_shape, x.device, "update(x)")
        if x.numel() == 0:
            return self
        if not reduce_dims:  # elementwise statistics: each tensor is a batch of one
            x, reduce_dims = x.unsqueeze(0), (0,)
        self._absorb(vars(batch_moments(x, reduce_dims, self._exclude_nonfinite)))
        return self

    def merge(self, other: Moments) -> Moments:
        """Fold ``other``'s statistics into self (Chan et al.'s formula); returns self."""
        if not isinstance(other, Moments):
            raise TypeError(f"Moments.merge expects a Moments, got {type(other).__name__}")
        if other._dims != self._dims or other._exclude_nonfinite != self._exclude_nonfinite:
            raise ValueError(
                f"Moments.merge: dims/exclude_nonfinite differ (self: dims={self._dims}, "
                f"exclude_nonfinite={self._exclude_nonfinite}; other: dims={other._dims}, "
                f"exclude_nonfinite={other._exclude_nonfinite}); only like statistics merge"
            )
        if other._state is None:
            return self
        if self._state is None:
            self._ndim = other._ndim
            self._state = {k: v.clone() for k, v in other._state.items()}
            return self
        self._check_compatible(other._state["mean"].shape, None, "merge(other)")
        device = self._state["mean"].device
        self._absorb({k: v.to(device) for k, v in other._state.items()})
        return self

    def all_reduce(self, group: Any = None) -> Moments:
        """Merge the statistics of every rank of ``group`` exactly, in place; returns self.

        Every rank ends with the same result: counts, means and M2 are gathered and merged with
        Chan's formula in rank order (never an average of variances). Ranks that saw no data
        take part too. See ``vitalstats.stats.distributed``.
        """
        from vitalstats.stats.distributed import all_reduce_moments

        return all_reduce_moments(self, group)

    def _absorb(self, batch: dict[str, torch.Tensor]) -> None:
        state = self._state
        assert state is not None
        state["count"], state["mean"], state["m2"] = chan_merge(
            state["count"], state["mean"], state["m2"], batch["count"], batch["mean"], batch["m2"]
        )
        state["min"] = torch.minimum(state["min"], batch["min"])
        state["max"] = torch.maximum(state["max"], batch["max"])
        state["nonfinite"] = state["nonfinite"] + batch["nonfinite"]

    # ----------------------------------------------------------------------------- results
    @property
    def dims(self) -> tuple[int, ...] | None:
        """The reduced dimensions as given (None: all)."""
        return self._dims

    @property
    def exclude_nonfinite(self) -> bool:
        """True when NaN/Inf values are left out of the moments (they are always counted)."""
        return self._exclude_nonfinite

    @property
    def count(self) -> torch.Tensor:
        """int64: number of values per statistic element that entered the moments."""
        return self._get("count")

    @property
    def mean(self) -> torch.Tensor:
        """float64 mean per statistic element (0 where count == 0)."""
        return self._get("mean")

    @property
    def m2(self) -> torch.Tensor:
        """float64 sum of squared deviations from the mean, sum((x - mean)^2)."""
        return self._get("m2")

    def var(self, unbiased: bool = False) -> torch.Tensor:
        """M2 / n (population, the default) or M2 / (n - 1) (Bessel); NaN where undefined."""
        self._require("var")
        correction = 1 if unbiased else 0
        count = self._get("count")
        divisor = (count - correction).to(torch.float64)
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=divisor.device)
        return torch.where(count > correction, self._get("m2") / divisor.clamp(min=1.0), nan)

    def std(self, unbiased: bool = False) -> torch.Tensor:
        """Square root of ``var(unbiased)``, same units as the data."""
        return self.var(unbiased).sqrt()

    @property
    def min(self) -> torch.Tensor:
        """float64 smallest value seen (+inf where count == 0)."""
        return self._get("min")

    @property
    def max(self) -> torch.Tensor:
        """float64 largest value seen (-inf where count == 0)."""
        return self._get("max")

    @property
    def nonfinite(self) -> torch.Tensor:
        """int64 number of NaN/Inf values seen (excluded from the moments if exclude_nonfinite)."""
        return self._get("nonfinite")

    def _get(self, key: str) -> torch.Tensor:
        self._require(key)
        assert self._state is not None
        return self._state[key]

    def _require(self, what: str) -> None:
        if self._state is None:
            raise RuntimeError(
                f"Moments.{what}: no data yet (dims={self._dims}); call update(x), merge() or "
                "from_state_dict() first"
            )

    # ----------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Plain dict (``torch.save``-able; loads with ``weights_only=True``).

        Keys (a stable format): ``version``, ``dims``, ``exclude_nonfinite``, ``ndim`` and, once
        data was seen, ``count`` and ``nonfinite`` (int64), ``mean``, ``m2``, ``min``, ``max``
        (float64), each of the kept dims' shape.
        """
        out: dict[str, Any] = {
            "version": _STATE_VERSION,
            "dims": self._dims,
            "exclude_nonfinite": self._exclude_nonfinite,
            "ndim": self._ndim,
        }
        if self._state is not None:
            out.update({k: v.clone() for k, v in self._state.items()})
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Moments:
        """Rebuild a ``Moments`` saved with ``state_dict()``."""
        version = state.get("version")
        if version != _STATE_VERSION:
            raise ValueError(
                f"Moments.from_state_dict: state version {version!r} is not supported (this "
                f"vitalstats reads version {_STATE_VERSION}); upgrade vitalstats"
            )
        moments = cls(state["dims"], exclude_nonfinite=state["exclude_nonfinite"])
        moments._ndim = state["ndim"]
        present = [k for k in _STATE_KEYS if k in state]
        if present:
            missing = sorted(set(_STATE_KEYS) - set(present))
            if missing:
                raise ValueError(f"Moments.from_state_dict: state lacks {missing}")
            moments._state = {k: state[k].clone() for k in _STATE_KEYS}
        return moments

    def __repr__(self) -> str:
        if self._state is None:
            return f"Moments(dims={self._dims}, empty)"
        shape = tuple(self._state["mean"].shape)
        return (
            f"Moments(dims={self._dims}, shape={shape}, "
            f"exclude_nonfinite={self._exclude_nonfinite}, device={self._state['mean'].device})"
        )

    # ----------------------------------------------------------------------------- checks
    def _layout(self, x: torch.Tensor) -> tuple[tuple[int, ...], torch.Size]:
        """(sorted reduced dims, kept shape) for ``x``; checks ndim against earlier batches."""
        if self._ndim is not None and x.dim() != self._ndim:
            raise ValueError(
                f"Moments(dims={self._dims}).update: got a {x.dim()}-d tensor of shape "
                f"{tuple(x.shape)}, expected {self._ndim}-d like the earlier batches; reshape "
                "the input or use a separate Moments"
            )
        ndim = x.dim()
        dims = tuple(range(ndim)) if self._dims is None else self._dims
        if any(not -ndim <= d < ndim for d in dims):
            raise ValueError(
                f"Moments(dims={self._dims}).update: dims out of range for input of shape "
                f"{tuple(x.shape)} ({ndim}-d); choose dims in [-{ndim}, {ndim - 1}]"
            )
        reduce_dims = tuple(sorted({d % ndim for d in dims}))
        self._ndim = x.dim()
        kept = torch.Size(s for d, s in enumerate(x.shape) if d not in reduce_dims)
        return reduce_dims, kept

    def _check_compatible(
        self, kept_shape: torch.Size, device: torch.device | None, where: str
    ) -> None:
        assert self._state is not None
        have = self._state["mean"]
        if have.shape != kept_shape:
            raise ValueError(
                f"Moments(dims={self._dims}).{where}: statistic shape {tuple(kept_shape)} does "
                f"not match the running shape {tuple(have.shape)}; the kept (non-reduced) dims "
                "must stay the same between batches"
            )
        if device is not None and device != have.device:
            raise ValueError(
                f"Moments(dims={self._dims}).{where}: input is on {device} but the statistics "
                f"live on {have.device}; move the input with .to({str(have.device)!r})"
            )


def _checked_dims(dims: int | Sequence[int] | None) -> tuple[int, ...] | None:
    """``dims`` as a tuple of ints (None stays None); a clear error for anything else."""
    if dims is None:
        return None
    try:
        if not isinstance(dims, Iterable):
            return (operator.index(dims),)
        if not isinstance(dims, str):
            return tuple(operator.index(d) for d in dims)
    except TypeError:
        pass
    raise TypeError(
        f"Moments: dims={dims!r}; expected the reduced dimensions as an int, a sequence of "
        "ints, or None for all, e.g. dims=(0, 2, 3) for per-channel statistics of (N, C, H, W)"
    )


def _empty_state(shape: torch.Size, device: torch.device) -> dict[str, torch.Tensor]:
    def filled(value: float, dtype: torch.dtype) -> torch.Tensor:
        return torch.full(shape, value, dtype=dtype, device=device)

    return {
        "count": filled(0, torch.int64),
        "mean": filled(0.0, torch.float64),
        "m2": filled(0.0, torch.float64),
        "min": filled(float("inf"), torch.float64),
        "max": filled(float("-inf"), torch.float64),
        "nonfinite": filled(0, torch.int64),
    }
