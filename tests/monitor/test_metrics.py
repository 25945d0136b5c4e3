"""The host-side finishing of raw summaries (``vitalstats.monitor.metrics``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitalstats.monitor.metrics import finalize
from vitalstats.stats.summary import finalize as device_finalize

RAW_ROWS = [
    [10.0, 1.0, 0.1, 5.0, -1.0, 2.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, np.inf, -np.inf, 0.0],  # no values
    [5.0, np.nan, np.nan, np.nan, np.nan, np.nan, 2.0],  # NaN inside
    [3.0, np.inf, np.nan, np.inf, 1.0, np.inf, 1.0],  # +Inf inside
    [4.0, 1.0, 1e-9, 1e-20, 0.0, 2.0, 0.0],  # rounding makes q - r^2/n negative: clamped
]


@pytest.mark.parametrize("row", RAW_ROWS)
def test_one_summary_finishes_as_the_vectorised_path_and_the_device(row):
    raw = np.array(row)
    one = finalize(raw)
    assert np.array_equal(one, finalize(raw[None])[0], equal_nan=True)
    assert np.array_equal(
        one, device_finalize(torch.tensor(row, dtype=torch.float64)).numpy(), equal_nan=True
    )
