"""Exponential moving averages: ``EMA`` (Adam's bias-corrected mean) and ``EMVar`` (mean + std).

Both accept Python floats or tensors (elementwise); a tensor state stays on its device and is
updated without host syncs. ``beta`` is the decay (weight kept by the past per step), in [0, 1).
"""

from __future__ import annotations

import math
from typing import Any

import torch

Value = float | torch.Tensor


def _check_beta(owner: str, beta: float) -> float:
    beta = float(beta)
    if not 0.0 <= beta < 1.0:
        raise ValueError(
            f"{owner}: beta={beta} is outside [0, 1); beta is the weight kept by the past per "
            "step, e.g. 0.9 averages over about 1 / (1 - beta) = 10 steps"
        )
    return beta


def _as_state(value: Value, tensor_dtype: torch.dtype | None = None) -> Value:
    """A detached float copy: ``tensor_dtype`` if given, else float32 for half/integer input."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if tensor_dtype is None and (
            not value.is_floating_point() or value.dtype in (torch.float16, torch.bfloat16)
        ):
            tensor_dtype = torch.float32
        return value.to(tensor_dtype or value.dtype, copy=True)
    return float(value)


class EMA:
    """Exponential moving average with Adam's bias correction.

    m_t = beta * m_{t-1} + (1 - beta) * x_t, m_0 = 0. ``value`` is m_t / (1 - beta^t) with
    ``bias_correction`` (an unbiased weighted mean of x_1..x_t: the first value comes back
    unchanged), else the raw m_t, which is biased towards 0 for the first ~1/(1 - beta) steps
    (exactly ``exp_avg`` inside ``torch.optim.Adam``). Tensor state keeps the input's dtype
    (float32 for half/bfloat16/integer input).
    """

    def __init__(self, beta: float, bias_correction: bool = True) -> None:
        self.beta = _check_beta("EMA", beta)
        self.bias_correction = bool(bias_correction)
        self.step = 0
        self._average: Value | None = None

    def update(self, value: Value) -> EMA:
        """Fold in one observation; returns self."""
        value = _as_state(value)
        if self._average is None:
            self._average = value * 0.0 if isinstance(value, torch.Tensor) else 0.0
        if isinstance(self._average, torch.Tensor):
            self._average.lerp_(torch.as_tensor(value, dtype=self._average.dtype), 1.0 - self.beta)
        else:
            self._average = self.beta * self._average + (1.0 - self.beta) * value
        self.step += 1
        return self

    @property
    def value(self) -> Value:
        """The (bias-corrected) average; raises before the first update."""
        if self._average is None:
            raise RuntimeError("EMA.value: no value yet; call update(x) first")
        if not self.bias_correction:
            return self._average
        return self._average / (1.0 - self.beta**self.step)

    def state_dict(self) -> dict[str, Any]:
        average = self._average.clone() if isinstance(self._average, torch.Tensor) else None
        return {
            "beta": self.beta,
            "bias_correction": self.bias_correction,
            "step": self.step,
            "average": average if average is not None else self._average,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta = _check_beta("EMA", state["beta"])
        self.bias_correction = bool(state["bias_correction"])
        self.step = int(state["step"])
        self._average = state["average"]

    def __repr__(self) -> str:
        return f"EMA(beta={self.beta}, bias_correction={self.bias_correction}, step={self.step})"


class EMVar:
    """Exponentially weighted mean and (population) variance of a stream.

    With weights w_i = beta^(t - i) over the observations x_1..x_t so far (normalised, so no
    start-up bias; pandas' ``ewm(alpha=1 - beta, adjust=True)`` weighting):

        mean_t = sum(w_i x_i) / W_t,   var_t = sum(w_i (x_i - mean_t)^2) / W_t,   W_t = sum(w_i)

    computed with West's (1979) weighted incremental update, which never forms the cancelling
    E[x^2] - E[x]^2 (stable for a loss of 1e4 +- 1e-3):

        W = beta W + 1;  d = x - mean;  mean += d / W;  S = beta S + (1 - 1/W) d^2;  var = S / W

    Use it for loss monitoring: ``mean`` and ``std`` of the loss over roughly the last
    1 / (1 - beta) steps. Tensor state is float64 (it is meant for scalars such as a loss).
    NaN/Inf inputs propagate (check the loss first if that matters).
    """

    def __init__(self, beta: float) -> None:
        self.beta = _check_beta("EMVar", beta)
        self.step = 0
        self._weight = 0.0  # W_t: a Python float, it does not depend on the data
        self._mean: Value | None = None
        self._sum_sq: Value | None = None  # S_t = W_t * var_t

    def update(self, value: Value) -> EMVar:
        """Fold in one observation; returns self."""
        value = _as_state(value, torch.float64)
        self._weight = self.beta * self._weight + 1.0
        if self._mean is None:
            self._mean = value
            self._sum_sq = value * 0.0 if isinstance(value, torch.Tensor) else 0.0
        else:
            delta = value - self._mean
            share = 1.0 / self._weight  # the new value's share of the total weight
            self._mean = self._mean + share * delta
            # delta * (x - mean_new) written as (1 - share) * delta^2: no cancellation
            self._sum_sq = self.beta * self._sum_sq + (1.0 - share) * delta * delta
        self.step += 1
        return self

    @property
    def mean(self) -> Value:
        """Exponentially weighted mean (raises before the first update)."""
        if self._mean is None:
            raise RuntimeError("EMVar.mean: no value yet; call update(x) first")
        return self._mean

    @property
    def var(self) -> Value:
        """Exponentially weighted population variance, S_t / W_t (0 after one value)."""
        if self._sum_sq is None:
            raise RuntimeError("EMVar.var: no value yet; call update(x) first")
        return self._sum_sq / self._weight

    @property
    def std(self) -> Value:
        """Square root of ``var``, in the data's units."""
        var = self.var
        return var.sqrt() if isinstance(var, torch.Tensor) else math.sqrt(max(var, 0.0))

    def state_dict(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "step": self.step,
            "weight": self._weight,
            "mean": self._mean,
            "sum_sq": self._sum_sq,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta = _check_beta("EMVar", state["beta"])
        self.step = int(state["step"])
        self._weight = float(state["weight"])
        self._mean, self._sum_sq = state["mean"], state["sum_sq"]

    def __repr__(self) -> str:
        return f"EMVar(beta={self.beta}, step={self.step})"
