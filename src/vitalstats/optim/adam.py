"""``Adam`` and ``AdamW``: torch's optimisers, with their moments exposed.

Drop-in replacements for ``torch.optim.Adam`` / ``torch.optim.AdamW``: the same arguments,
param groups and state layout (``step`` as a 0-dim float32 CPU tensor, ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``), so a ``state_dict`` moves between ours and torch's in
both directions and LR schedulers from ``torch.optim.lr_scheduler`` work unchanged. The maths
lives in :mod:`vitalstats.optim.functional`; :meth:`Adam.moment_stats` reads it back.

    >>> import torch, vitalstats as vs
    >>> model = torch.nn.Linear(4, 2)
    >>> optimizer = vs.optim.AdamW(model.parameters(), lr=1e-3)
    >>> model(torch.randn(8, 4)).square().mean().backward()
    >>> optimizer.step()
    >>> optimizer.moment_stats(model.named_parameters()).names
    ('weight', 'bias')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from vitalstats.optim._params import has_foreach_kernels
from vitalstats.optim.functional import (
    AdamHyperParameters,
    adam_fused,
    adam_multi_tensor,
    adam_single_tensor,
)
from vitalstats.optim.moment_stats import MomentStats, moment_stats

_UNSUPPORTED_FLAGS = {
    "capturable": "CUDA-graph capture",
    "differentiable": "differentiating through the step",
}
_FUSED_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "hpu", "mtia")


def _new_step_counter(param: Tensor, fused: bool | None, value: float = 0.0) -> Tensor:
    """The ``step`` counter as torch lays it out: a 0-dim tensor on the CPU (reading it costs
    no device sync), float64 only under a float64 default dtype; with ``fused``, float32 on
    the parameter's device, where the fused kernel reads it."""
    if fused:
        return torch.tensor(value, dtype=torch.float32, device=param.device)
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return torch.tensor(value, dtype=dtype)


def _check_hyper_parameters(
    optimizer: str, lr: float | Tensor, betas: Any, eps: float, weight_decay: float
) -> None:
    """Raise ``ValueError`` naming the argument, the value and the fix."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError(
            f"{optimizer}: a tensor lr must have exactly one element, got shape "
            f"{tuple(lr.shape)}. Pass torch.tensor(1e-3) or a float."
        )
    if not lr >= 0.0:
        raise ValueError(f"{optimizer}: lr must be >= 0, got {lr}. Pass e.g. lr=1e-3.")
    if not eps >= 0.0:
        raise ValueError(f"{optimizer}: eps must be >= 0, got {eps}. Pass e.g. eps=1e-8.")
    if not weight_decay >= 0.0:
        raise ValueError(
            f"{optimizer}: weight_decay must be >= 0, got {weight_decay}. Pass 0 to disable it."
        )
    if len(betas) != 2:
        raise ValueError(
            f"{optimizer}: betas must be a pair (beta1, beta2), got {betas!r}. "
            "Pass e.g. betas=(0.9, 0.999)."
        )
    for index, beta in enumerate(betas):
        if isinstance(beta, Tensor):
            raise ValueError(
                f"{optimizer}: betas[{index}] is a tensor; vitalstats takes betas as Python "
                f"floats. Pass betas=({float(betas[0])}, {float(betas[1])})."
            )
        if not 0.0 <= beta < 1.0:
            raise ValueError(
                f"{optimizer}: betas[{index}] must be in [0, 1), got {beta}. "
                "Pass e.g. betas=(0.9, 0.999)."
            )


def _check_flags_supported(optimizer: str, flags: dict[str, Any]) -> None:
    for flag, meaning in _UNSUPPORTED_FLAGS.items():
        if flags.get(flag):
            raise ValueError(
                f"{optimizer}: {flag}=True ({meaning}) is not supported by vitalstats. Use "
                f"torch.optim.{optimizer}({flag}=True); vs.optim.moment_stats(optimizer) reads "
                "its moments the same way."
            )


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with torch's exact semantics and exposed moments.

    Per parameter: ``m`` and ``v`` are exponential averages (``beta1``, ``beta2``) of the
    gradient and of its square; the step is ``lr * m_hat / (sqrt(v_hat) + eps)`` with the
    bias-corrected ``m_hat = m / (1 - beta1**t)`` and ``v_hat = v / (1 - beta2**t)``.
    ``weight_decay`` adds ``weight_decay * theta`` to the gradient (an L2 penalty that goes
    through the moments); ``decoupled_weight_decay=True`` (or :class:`AdamW`) instead shrinks
    ``theta`` by ``1 - lr * weight_decay`` outside them. ``amsgrad`` divides by the running
    maximum of ``v``; ``maximize`` ascends. ``foreach=None`` (default) uses the multi-tensor
    path wherever the foreach kernels exist (CPU included; torch picks single-tensor on CPU).
    ``fused=True`` runs torch's fused kernel (one pass over memory, several times faster on
    the CPU; bit-identical to ``torch.optim.Adam(fused=True)``, not to the default path).

    Differences from torch: ``capturable`` and ``differentiable`` are accepted so state dicts
    interchange, but ``True`` raises ``ValueError``; betas must be floats; a tensor ``lr``
    also works with ``foreach=True`` (torch requires ``capturable`` for that).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        name = type(self).__name__
        _check_hyper_parameters(name, lr, betas, eps, weight_decay)
        flags = {"capturable": capturable, "differentiable": differentiable, "fused": fused}
        _check_flags_supported(name, flags)
        if fused and foreach:
            raise ValueError(
                f"{name}: fused=True and foreach=True exclude each other. Pass one of them."
            )
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Fill group keys missing from older checkpoints; turn float steps into tensors."""
        super().__setstate__(state)
        for group in self.param_groups:
            for key, default in (
                ("amsgrad", False),
                ("maximize", False),
                ("foreach", None),
                ("capturable", False),
                ("differentiable", False),
                ("fused", None),
                ("decoupled_weight_decay", False),
            ):
                group.setdefault(key, default)
            for param in group["params"]:
                param_state = self.state.get(param, {})
                if param_state and not torch.is_tensor(param_state["step"]):
                    step = float(param_state["step"])
                    param_state["step"] = _new_step_counter(param, group["fused"], step)

    def _gather_group(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        """Parameters with a gradient and their state tensors; creates state on first use."""
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
        names = group.get("param_names")
        for index, param in enumerate(group["params"]):
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                label = names[index] if names else f"params[{index}]"
                raise RuntimeError(
                    f"{type(self).__name__}: parameter {label} {tuple(param.shape)} has a sparse "
                    "gradient; Adam needs dense gradients. Use torch.optim.SparseAdam or a "
                    "dense embedding (sparse=False)."
                )
            state = self.state[param]
            if group["fused"] and not (
                param.is_floating_point() and param.device.type in _FUSED_DEVICE_TYPES
            ):
                label = names[index] if names else f"params[{index}]"
                raise RuntimeError(
                    f"{type(self).__name__}: fused=True needs floating-point parameters on "
                    f"{', '.join(_FUSED_DEVICE_TYPES)}; parameter {label} is {param.dtype} on "
                    f"{param.device.type}. Pass fused=None for the multi-tensor path."
                )
            if not state:
                state["step"] = _new_step_counter(param, group["fused"])
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if group["amsgrad"] and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(
                    param, memory_format=torch.preserve_format
                )
            params.append(param)
            grads.append(param.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        name = type(self).__name__
        for group in self.param_groups:
            _check_flags_supported(name, group)
            beta1, beta2 = group["betas"]
            lr = group["lr"]
            if isinstance(lr, Tensor) and lr.dim() != 0:
                lr = lr.squeeze()
            hyper = AdamHyperParameters(
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                amsgrad=group["amsgrad"],
                maximize=group["maximize"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
            )
            tensors = self._gather_group(group)
            if group["fused"]:
                adam_fused(*tensors, hyper)
                continue
            foreach = group["foreach"]
            if foreach is None:
                foreach = has_foreach_kernels(tensors[0])
            elif foreach and not has_foreach_kernels(tensors[0]):
                devices = sorted({t.device.type for t in tensors[0]})
                raise RuntimeError(
                    f"{name}: foreach=True, but the foreach kernels do not support parameters "
                    f"on {devices} (or tensor subclasses). Pass foreach=False."
                )
            update = adam_multi_tensor if foreach else adam_single_tensor
            update(*tensors, hyper)
        return loss

    def moment_stats(
        self, named_parameters: Iterable[tuple[str, Tensor]] | None = None
    ) -> MomentStats:
        """Per-parameter statistics of the moments; see :func:`vitalstats.optim.moment_stats`."""
        return moment_stats(self, named_parameters)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    Each step first shrinks every parameter, ``theta *= 1 - lr * weight_decay``, then takes
    the plain Adam step; the decay never enters ``m`` or ``v``. The default ``weight_decay``
    is 1e-2, as in ``torch.optim.AdamW``.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        """An AdamW always decays decoupled, whatever the loaded groups say."""
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
