"""Adam and AdamW maths: a readable single-tensor step and a multi-tensor (foreach) step.

For one parameter theta with gradient g at step t (t counts from 1)::

    g      <- -g                                  if maximize
    g      <- g + weight_decay * theta            Adam: L2 penalty, enters both moments
    theta  <- theta * (1 - lr * weight_decay)     AdamW: decoupled, never enters the moments
    m      <- beta1 * m + (1 - beta1) * g         first moment (computed as lerp(m, g, 1 - beta1))
    v      <- beta2 * v + (1 - beta2) * g * g     second moment
    v_max  <- max(v_max, v)                       amsgrad only; then v_used = v_max, else v
    m_hat   = m / (1 - beta1**t)                  bias corrections: m and v start at 0
    v_hat   = v_used / (1 - beta2**t)
    theta  <- theta - lr * m_hat / (sqrt(v_hat) + eps)

The last line is evaluated in the same order of float operations as ``torch.optim.Adam``
(``sqrt(v_used) / sqrt(1 - beta2**t) + eps``, then ``theta += (-lr / (1 - beta1**t)) * m /
denominator``), so a step of ours and one of torch's give identical bits. The first two
paths below compute the same numbers: the single-tensor one is the maths as a loop, the
multi-tensor one issues one ``torch._foreach_*`` call per line for all parameters of a device
and dtype. ``adam_fused`` hands the whole step to torch's fused kernel (same maths, its own
rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vitalstats.optim._params import group_by_device_and_dtype


@dataclass(frozen=True)
class AdamHyperParameters:
    """The hyper-parameters of one param group, as ``torch.optim.Adam`` names them."""

    lr: float | Tensor
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    amsgrad: bool
    maximize: bool
    decoupled_weight_decay: bool


def _real_view(tensor: Tensor) -> Tensor:
    """A complex tensor as a real one with a trailing (real, imag) axis; others unchanged."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def adam_single_tensor(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    hyper: AdamHyperParameters,
) -> None:
    """One Adam/AdamW step, parameter by parameter (the readable reference path).

    ``steps`` are the per-parameter step counters (0-dim CPU tensors), incremented here.
    ``max_exp_avg_sqs`` is empty unless ``hyper.amsgrad``. Everything is updated in place.
    """
    lr, beta1, beta2, eps = hyper.lr, hyper.beta1, hyper.beta2, hyper.eps
    for index, param in enumerate(params):
        grad = -grads[index] if hyper.maximize else grads[index]
        steps[index] += 1
        if hyper.weight_decay != 0:
            if hyper.decoupled_weight_decay:
                param.mul_(1 - lr * hyper.weight_decay)
            else:
                grad = grad.add(param, alpha=hyper.weight_decay)

        param, grad = _real_view(param), _real_view(grad)
        exp_avg, exp_avg_sq = _real_view(exp_avgs[index]), _real_view(exp_avg_sqs[index])

        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

        step = steps[index].item()  # a CPU counter: no device sync
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        step_size = lr / bias_correction1

        second_moment = exp_avg_sq
        if hyper.amsgrad:
            max_exp_avg_sq = _real_view(max_exp_avg_sqs[index])
            torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            second_moment = max_exp_avg_sq
        denominator = (second_moment.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denominator, value=-step_size)


def _negative_step_sizes(lr: float | Tensor, bias_corrections1: list[float]) -> list[float]:
    """``-lr / (1 - beta1**t)`` per parameter, as Python numbers for ``_foreach_addcdiv_``.

    A tensor ``lr`` is divided in its own dtype, as torch's single-tensor path does; that
    needs one read of the result (no device sync when ``lr`` lives on the CPU).
    """
    if not isinstance(lr, Tensor):
        return [-(lr / correction) for correction in bias_corrections1]
    distinct = sorted(set(bias_corrections1))
    values = torch.stack([-(lr / correction) for correction in distinct]).tolist()
    by_correction = dict(zip(distinct, values))
    return [by_correction[correction] for correction in bias_corrections1]


def adam_multi_tensor(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    hyper: AdamHyperParameters,
) -> None:
    """One Adam/AdamW step for many parameters with ``torch._foreach_*`` kernels.

    Same arguments and same bits as :func:`adam_single_tensor`; one kernel launch per
    line of the maths per (device, dtype) group instead of one per parameter.
    """
    if not params:
        return
    lr, beta1, beta2, eps = hyper.lr, hyper.beta1, hyper.beta2, hyper.eps
    torch._foreach_add_(steps, 1.0)
    step_values = [step.item() for step in steps]  # CPU counters: no device sync

    params = [_real_view(t) for t in params]
    grads = [_real_view(t) for t in grads]
    exp_avgs = [_real_view(t) for t in exp_avgs]
    exp_avg_sqs = [_real_view(t) for t in exp_avg_sqs]
    max_exp_avg_sqs = [_real_view(t) for t in max_exp_avg_sqs]

    for indices in group_by_device_and_dtype(params).values():
        group_params = [params[i] for i in indices]
        group_grads = [grads[i] for i in indices]
        group_exp_avgs = [exp_avgs[i] for i in indices]
        group_exp_avg_sqs = [exp_avg_sqs[i] for i in indices]
        group_steps = [step_values[i] for i in indices]

        if hyper.maximize:
            group_grads = torch._foreach_neg(group_grads)
        if hyper.weight_decay != 0:
            if hyper.decoupled_weight_decay:
                decay = 1 - lr * hyper.weight_decay
                if isinstance(decay, Tensor):  # foreach wants the factor on the params' device
                    decay = decay.to(group_params[0].device)
                torch._foreach_mul_(group_params, decay)
            elif hyper.maximize:  # already a fresh copy: add in place
                torch._foreach_add_(group_grads, group_params, alpha=hyper.weight_decay)
            else:
                group_grads = torch._foreach_add(
                    group_grads, group_params, alpha=hyper.weight_decay
                )

        torch._foreach_lerp_(group_exp_avgs, group_grads, 1 - beta1)
        torch._foreach_mul_(group_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(group_exp_avg_sqs, group_grads, group_grads, 1 - beta2)
        del group_grads

        bias_corrections1 = [1 - beta1**step for step in group_steps]
        bias_corrections2_sqrt = [(1 - beta2**step) ** 0.5 for step in group_steps]
        second_moments = group_exp_avg_sqs
        if hyper.amsgrad:
            second_moments = [max_exp_avg_sqs[i] for i in indices]
            torch._foreach_maximum_(second_moments, group_exp_avg_sqs)
        denominators = torch._foreach_sqrt(second_moments)
        torch._foreach_div_(denominators, bias_corrections2_sqrt)
        torch._foreach_add_(denominators, eps)
        torch._foreach_addcdiv_(
            group_params,
            group_exp_avgs,
            denominators,
            _negative_step_sizes(lr, bias_corrections1),
        )


def adam_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    hyper: AdamHyperParameters,
) -> None:
    """One Adam/AdamW step with torch's fused kernels (``torch._fused_adam_``/``_fused_adamw_``).

    The same maths in one pass over memory per tensor (several times faster on the CPU), but
    in a different order of float operations: it matches ``torch.optim.Adam(fused=True)`` bit
    for bit, the two paths above only to rounding. ``steps`` live on the parameters' device.
    """
    kernel = torch._fused_adamw_ if hyper.decoupled_weight_decay else torch._fused_adam_
    for (device, _), indices in group_by_device_and_dtype(params).items():
        group_steps = [steps[i] for i in indices]
        torch._foreach_add_(group_steps, 1)
        lr = hyper.lr
        if isinstance(lr, Tensor) and lr.device != device:
            lr = lr.to(device)
        kernel(
            [params[i] for i in indices],
            [grads[i] for i in indices],
            [exp_avgs[i] for i in indices],
            [exp_avg_sqs[i] for i in indices],
            [max_exp_avg_sqs[i] for i in indices] if hyper.amsgrad else [],
            group_steps,
            lr=lr,
            beta1=hyper.beta1,
            beta2=hyper.beta2,
            weight_decay=hyper.weight_decay,
            eps=hyper.eps,
            amsgrad=hyper.amsgrad,
            maximize=hyper.maximize,
        )
