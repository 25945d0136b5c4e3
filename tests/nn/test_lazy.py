"""vs.nn.Lazy*: num_features from the first input, then the eager vitalstats class with torch's
state layout (the module_db run checks outputs and state against torch's lazy twins)."""

from __future__ import annotations

import pytest
import torch

import vitalstats as vs


@pytest.mark.parametrize(
    ("lazy", "eager", "shape"),
    [
        (vs.nn.LazyBatchNorm1d, vs.nn.BatchNorm1d, (4, 6)),
        (vs.nn.LazyBatchNorm2d, vs.nn.BatchNorm2d, (4, 6, 3, 3)),
        (vs.nn.LazyBatchNorm3d, vs.nn.BatchNorm3d, (4, 6, 2, 2, 2)),
        (vs.nn.LazyInstanceNorm2d, vs.nn.InstanceNorm2d, (4, 6, 3, 3)),
    ],
)
def test_first_forward_materialises_and_becomes_the_eager_class(lazy, eager, shape) -> None:
    layer = lazy()
    layer(torch.randn(shape))
    assert type(layer) is eager
    assert (
        layer.num_features == 6 and layer.weight.shape == (6,) and layer.running_var.shape == (6,)
    )
    twin = getattr(torch.nn, eager.__name__)(6, affine=True, track_running_stats=True)
    twin.load_state_dict(layer.state_dict())  # torch's layout: loads strictly


def test_lazy_batch_norm_keeps_the_non_finite_guard_and_batch_statistics() -> None:
    layer = vs.nn.LazyBatchNorm1d()
    x = torch.randn(8, 3)
    layer(x)
    torch.testing.assert_close(layer.batch_mean, x.mean(0))
    before = layer.running_mean.clone()
    with pytest.warns(vs.nn.NonFiniteBatchWarning):
        layer(torch.full((8, 3), float("nan")))
    torch.testing.assert_close(layer.running_mean, before)


def test_unbatched_instance_norm_infers_the_channel_dim() -> None:
    """torch reads dim 1 (a spatial size here) and then fails on its own sample."""
    layer = vs.nn.LazyInstanceNorm1d()
    y = layer(torch.randn(3, 15))  # (C, L)
    assert layer.num_features == 3 and y.shape == (3, 15)
