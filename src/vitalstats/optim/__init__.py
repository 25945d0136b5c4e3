"""Optimiser statistics: Adam/AdamW with exposed moments, gradient clipping, gradient norms.

    import vitalstats as vs
    optimizer = vs.optim.AdamW(model.parameters(), lr=1e-3)      # torch.optim.AdamW, exactly
    loss.backward()
    health = vs.optim.grad_stats(model)                           # mean/std/max of grad norms
    vs.optim.clip_grad_norm_(model.named_parameters(), max_norm=1.0, error_if_nonfinite=True)
    optimizer.step()
    stats = optimizer.moment_stats(model.named_parameters())      # per-parameter device tensors

``vs.optim.moment_stats(torch_optimizer)`` reads torch's own Adam/AdamW the same way.
"""

from vitalstats.optim.adam import Adam, AdamW
from vitalstats.optim.clip import NonFiniteGradientError, clip_grad_norm_
from vitalstats.optim.functional import (
    AdamHyperParameters,
    adam_fused,
    adam_multi_tensor,
    adam_single_tensor,
)
from vitalstats.optim.grad_stats import GradStats, grad_stats
from vitalstats.optim.moment_stats import (
    MOMENT_SUM_FIELDS,
    AdamEntry,
    MomentStats,
    adam_entries,
    moment_stats,
    moment_sums,
    stats_from_sums,
)

__all__ = [
    "MOMENT_SUM_FIELDS",
    "Adam",
    "AdamEntry",
    "AdamHyperParameters",
    "AdamW",
    "GradStats",
    "MomentStats",
    "NonFiniteGradientError",
    "adam_entries",
    "adam_fused",
    "adam_multi_tensor",
    "adam_single_tensor",
    "clip_grad_norm_",
    "grad_stats",
    "moment_stats",
    "moment_sums",
    "stats_from_sums",
]
