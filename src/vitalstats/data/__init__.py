"""Input normalisation modules fitted in one streaming pass through ``vs.stats.Moments``.

scaler = vs.data.Standardize().fit(train_loader)   # per-feature z-score, sklearn-compatible
model = torch.nn.Sequential(scaler, net)           # statistics travel in state_dict
"""

from vitalstats.data.base import NanPolicy, StreamingScaler
from vitalstats.data.minmax import MinMaxScale
from vitalstats.data.standardize import Standardize

__all__ = ["MinMaxScale", "NanPolicy", "Standardize", "StreamingScaler"]
