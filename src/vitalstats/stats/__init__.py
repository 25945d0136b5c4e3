"""Streaming statistics: exact moments, exponential moving averages, distributed merging.

    m = vs.stats.Moments(dims=(0, 2, 3)).update(x)   # per-channel count/mean/var/min/max
    ema = vs.stats.EMA(0.99)                          # Adam-style bias-corrected average
    loss_stats = vs.stats.EMVar(0.98)                 # exponentially weighted mean and std
    vs.stats.summarize(x)     # float64 [count, mean, M2, min, max, nonfinite] of one tensor

No ``torch.nn`` here; everything is plain tensor arithmetic.
"""

from vitalstats.stats.batch import BatchMoments, batch_moments
from vitalstats.stats.ema import EMA, EMVar
from vitalstats.stats.merge import chan_merge
from vitalstats.stats.moments import Moments
from vitalstats.stats.summary import SUMMARY_FIELDS, merge_many, merge_summaries, summarize
from vitalstats.stats.workspace import release_workspace

__all__ = [
    "EMA",
    "SUMMARY_FIELDS",
    "BatchMoments",
    "EMVar",
    "Moments",
    "batch_moments",
    "chan_merge",
    "merge_many",
    "merge_summaries",
    "release_workspace",
    "summarize",
]
