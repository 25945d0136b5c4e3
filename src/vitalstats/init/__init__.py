"""Initialisation and signal propagation.

- Gains and std formulas: :func:`calculate_gain`, :func:`xavier_std`, :func:`kaiming_std`,
  :func:`second_moment_gain`.
- Initialisers bit-exact with ``torch.nn.init`` (same generator, same tensor):
  :func:`xavier_uniform_`, :func:`xavier_normal_`, :func:`kaiming_uniform_`,
  :func:`kaiming_normal_`, :func:`orthogonal_`, :func:`trunc_normal_`.
- Whole models: :func:`init_model_` (gains inferred from the following activation) and
  :func:`lsuv_` (Mishkin & Matas 2015).
- Measuring: :func:`propagate` (per-layer mean/std/saturation/gradient std against the
  mean-field prediction) and :func:`build_mlp` (the MLP the CLI analyses).
"""

from __future__ import annotations

from vitalstats.init.gains import (
    KNOWN_NONLINEARITIES,
    calculate_gain,
    fan_in_and_fan_out,
    kaiming_std,
    xavier_std,
)
from vitalstats.init.initializers import (
    kaiming_normal_,
    kaiming_uniform_,
    orthogonal_,
    trunc_normal_,
    xavier_normal_,
    xavier_uniform_,
)
from vitalstats.init.lsuv import LSUVRecord, lsuv_
from vitalstats.init.mlp import build_mlp
from vitalstats.init.model_init import (
    InferredNonlinearity,
    InitRecord,
    infer_nonlinearities,
    init_model_,
)
from vitalstats.init.propagate import propagate
from vitalstats.init.records import LayerPropagation, PropagationReport
from vitalstats.init.theory import GaussianMoments, second_moment_gain

__all__ = [
    "KNOWN_NONLINEARITIES",
    "GaussianMoments",
    "InferredNonlinearity",
    "InitRecord",
    "LSUVRecord",
    "LayerPropagation",
    "PropagationReport",
    "build_mlp",
    "calculate_gain",
    "fan_in_and_fan_out",
    "infer_nonlinearities",
    "init_model_",
    "kaiming_normal_",
    "kaiming_std",
    "kaiming_uniform_",
    "lsuv_",
    "orthogonal_",
    "propagate",
    "second_moment_gain",
    "trunc_normal_",
    "xavier_normal_",
    "xavier_std",
    "xavier_uniform_",
]
