"""``vs.lint``: the monitor's checks without training.

Static checks read the module tree and its flags; with ``example_input`` one forward pass
(no gradients, BatchNorm buffers restored afterwards) adds the activation checks at
initialisation: std trend with depth, saturation, dead units, NaN/Inf, tiny batches, and a
traced bias-before-BatchNorm check (exact, by tensor identity).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from vitalstats.monitor.findings import Finding, make_finding
from vitalstats.monitor.norm_layers import frozen_but_updating, is_batchnorm, track_flag_flipped
from vitalstats.monitor.selection import unwrap

_BIASED = (nn.Linear, nn.modules.conv._ConvNd)


def bias_before_norm_finding(name: str, norm_name: str) -> Finding:
    return make_finding(
        "BIAS_BEFORE_NORM",
        name,
        None,
        f"this layer's bias feeds {norm_name}, whose mean subtraction cancels it: the bias "
        "gets zero gradient and only wastes parameters (it is not 'zeroed', it is cancelled).",
        "construct the layer with bias=False.",
    )


def _out_features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    return None


def static_findings(model: nn.Module) -> list[Finding]:
    """Checks from the module tree alone (no device work, no host sync)."""
    model, _ = unwrap(model)
    found: list[Finding] = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for (name_a, a), (name_b, b) in itertools.pairwise(children):
            if (
                isinstance(a, _BIASED)
                and a.bias is not None
                and is_batchnorm(b)
                and _out_features(a) == getattr(b, "num_features", None)
            ):
                prefix = f"{parent_name}." if parent_name else ""
                found.append(bias_before_norm_finding(prefix + name_a, prefix + name_b))
    for name, module in model.named_modules():
        if not is_batchnorm(module):
            continue
        found.extend(batchnorm_static(name, module))
    return found


def batchnorm_static(name: str, module: nn.Module, limit: float = 0.5) -> list[Finding]:
    """Flags of one BatchNorm: momentum convention, flipped tracking, frozen-but-updating."""
    found = []
    momentum = module.momentum
    if momentum is not None and momentum > limit:
        found.append(
            make_finding(
                "BN_HIGH_MOMENTUM",
                name,
                None,
                f"momentum={momentum}: PyTorch updates running = (1 - momentum) * running + "
                f"momentum * batch, so {momentum} keeps only {1 - momentum:.2g} of the history "
                "(Keras/TensorFlow's momentum is PyTorch's 1 - momentum).",
                f"use momentum={1 - momentum:.3g} (PyTorch convention; default 0.1), or None for a "
                "cumulative average.",
            )
        )
    if track_flag_flipped(module):
        found.append(
            make_finding(
                "BN_TRACK_RUNNING_STATS_FLIPPED",
                name,
                None,
                "track_running_stats=False but running buffers exist, so the flag was flipped "
                "after construction: in training mode it normalises with batch statistics and "
                "stops updating the buffers; in eval mode it still uses the (stale) buffers.",
                "for inference call model.eval() and leave track_running_stats alone; to drop "
                "running statistics construct the layer with track_running_stats=False.",
            )
        )
    if frozen_but_updating(module):
        found.append(
            make_finding(
                "BN_FROZEN_BUT_UPDATING",
                name,
                None,
                "weight/bias have requires_grad=False but the layer is in training mode, so its "
                "running statistics keep changing (a fine-tuning surprise).",
                "put frozen BatchNorm layers in eval mode after every model.train() (or "
                "momentum=0), or unfreeze them.",
            )
        )
    return found


def _running_nonfinite(model: nn.Module) -> list[Finding]:
    found = []
    for name, module in model.named_modules():
        if not is_batchnorm(module) or module.running_mean is None:
            continue
        finite = bool(torch.isfinite(module.running_mean).all()) and bool(
            torch.isfinite(module.running_var).all()
        )  # lint may sync: it runs once
        if not finite:
            found.append(
                make_finding(
                    "BN_RUNNING_NONFINITE",
                    name,
                    None,
                    "running_mean/running_var hold NaN/Inf; every eval-mode forward outputs NaN.",
                    "reload the buffers from a checkpoint or reset_running_stats() and re-estimate "
                    "them (vs.nn.PreciseBN).",
                )
            )
    return found


def lint(model: nn.Module, example_input: Any = None) -> list[Finding]:
    """Run the monitor's checks without training and return the findings.

    ``example_input``: a tensor, or a tuple of positional arguments, for one forward pass in
    the model's current mode under ``torch.no_grad()``; BatchNorm buffers are restored.

        >>> findings = vs.lint(model, torch.randn(32, 784))
    """
    inner, _ = unwrap(model)
    found = static_findings(inner) + _running_nonfinite(inner)
    if example_input is None:
        return found
    from vitalstats.monitor.config import MonitorConfig
    from vitalstats.monitor.monitor import Monitor

    args = example_input if isinstance(example_input, tuple) else (example_input,)
    saved = {name: buffer.detach().clone() for name, buffer in inner.named_buffers()}
    config = MonitorConfig(
        activations_every=1,
        nonfinite_every=1,
        norm_layers_every=0,
        output_grads_every=0,
        parameters_every=0,
        updates_every=0,
        grad_norm_every=0,
        optimizer_moments_every=0,
        histograms_every=0,
    )
    monitor = Monitor(inner, config=config, _lint=True)
    try:
        with torch.no_grad():
            inner(*args)
        monitor.step()
        monitor.flush()
        dynamic = monitor.findings.all()
    finally:
        monitor.detach()
        with torch.no_grad():
            for name, buffer in inner.named_buffers():
                buffer.copy_(saved[name])
    seen = {(f.code, f.layer) for f in found}
    return found + [f for f in dynamic if (f.code, f.layer) not in seen]
