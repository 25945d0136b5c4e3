"""The CPU scratch buffers are reused, grown on demand and released on request."""

import torch

from vitalstats.stats import workspace


def test_scratch_is_reused_grown_and_released():
    workspace.release_workspace()
    small = workspace.scratch("work", torch.Size([4, 5]), torch.float32, torch.device("cpu"))
    again = workspace.scratch("work", torch.Size([2, 3]), torch.float32, torch.device("cpu"))
    assert again.data_ptr() == small.data_ptr() and again.shape == (2, 3)
    other_dtype = workspace.scratch("work", torch.Size([4]), torch.float64, torch.device("cpu"))
    assert other_dtype.dtype == torch.float64 and other_dtype.data_ptr() != small.data_ptr()
    bigger = workspace.scratch("work", torch.Size([100]), torch.float32, torch.device("cpu"))
    assert bigger.numel() == 100 and bigger.is_contiguous()
    workspace.release_workspace()
    assert workspace._local.buffers == {}
