"""Tests here run tiny tensors: one intra-op thread is much faster than a thread pool on a
loaded machine, and keeps timings independent of the host's core count."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
