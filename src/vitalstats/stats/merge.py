"""Chan et al.'s pairwise merge of (count, mean, M2) summaries.

For two disjoint sets A and B with counts n_a, n_b, means m_a, m_b and sums of squared
deviations M2_a, M2_b (M2 = sum((x - mean)^2)), the union has

    n     = n_a + n_b
    delta = m_b - m_a
    mean  = m_a + delta * n_b / n
    M2    = M2_a + M2_b + delta^2 * n_a * n_b / n

(Chan, Golub and LeVeque, "Updating formulae and a pairwise algorithm for computing sample
variances", 1979). The formula is exact in exact arithmetic, so merging is associative and
independent of how the data was split; in float64 it is stable because it only adds
non-negative terms. Elementwise over tensors of any (equal, broadcastable) shape; an empty
side (n = 0) leaves the other unchanged.
"""

from __future__ import annotations

import torch


def chan_merge(
    count_a: torch.Tensor,
    mean_a: torch.Tensor,
    m2_a: torch.Tensor,
    count_b: torch.Tensor,
    mean_b: torch.Tensor,
    m2_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (count, mean, M2) of the union of A and B. Counts int64, the rest float64."""
    count = count_a + count_b
    n_a = count_a.to(torch.float64)
    n_b = count_b.to(torch.float64)
    n = count.to(torch.float64).clamp(min=1.0)  # n = 0 only when both sides are empty
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    # An empty side may carry a NaN mean (e.g. a NaN batch with nothing finite); ignore it.
    mean = torch.where(count_b == 0, mean_a, torch.where(count_a == 0, mean_b, mean))
    m2 = m2_a + m2_b + delta.square() * (n_a * n_b / n)
    m2 = torch.where(count_b == 0, m2_a, torch.where(count_a == 0, m2_b, m2))
    return count, mean, m2
