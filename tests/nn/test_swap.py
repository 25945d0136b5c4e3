"""vs.nn.swap_norm_layers: both directions, same outputs, same Parameter objects, mode, dtype."""

from __future__ import annotations

import pytest
import torch

import vitalstats as vs
from vitalstats.nn import batchnorm, instancenorm, normalization


def _torch_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.GroupNorm(2, 4), torch.nn.InstanceNorm2d(4, affine=True),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 8), torch.nn.LayerNorm(8, bias=False),
        torch.nn.RMSNorm(8), torch.nn.BatchNorm1d(8, momentum=None, affine=False),
    )  # fmt: skip


VS_TYPES = (batchnorm.BatchNorm2d, normalization.GroupNorm, instancenorm.InstanceNorm2d,
            normalization.LayerNorm, normalization.RMSNorm, batchnorm.BatchNorm1d)  # fmt: skip


def test_swap_to_vitalstats_and_back_preserves_outputs_parameters_and_buffers() -> None:
    model = _torch_model()
    model(torch.randn(5, 3, 6, 6))  # non-default running statistics
    reference = _torch_model()
    reference.load_state_dict(model.state_dict())
    parameters_before = [id(p) for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    swapped = vs.nn.swap_norm_layers(model, to="vitalstats")
    assert swapped is model
    assert [type(m) for m in model if isinstance(m, VS_TYPES)] and all(
        type(m).__module__.startswith("vitalstats") for m in model if "Norm" in type(m).__name__
    )
    assert [id(p) for p in model.parameters()] == parameters_before  # optimiser still valid
    assert model[1].layer_name == "1"
    x = torch.randn(5, 3, 6, 6)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    model(x).square().mean().backward()
    optimizer.step()  # the swapped layers' parameters are the optimiser's
    vs.nn.swap_norm_layers(model, to="torch")
    assert all(type(m).__module__.startswith("torch") for m in model)


def test_mode_device_and_dtype_are_preserved() -> None:
    model = _torch_model().double().eval()
    vs.nn.swap_norm_layers(model)
    assert not model[1].training and model[1].running_mean.dtype == torch.float64
    assert model[1].weight.device == torch.device("cpu")
    model(torch.randn(2, 3, 6, 6, dtype=torch.float64))


def test_a_norm_layer_as_root_is_returned_converted() -> None:
    layer = vs.nn.swap_norm_layers(torch.nn.BatchNorm1d(3))
    assert isinstance(layer, vs.nn.BatchNorm1d)


def test_subclasses_without_a_twin_are_left_alone() -> None:
    model = torch.nn.Sequential(vs.nn.BatchRenorm1d(3))
    vs.nn.swap_norm_layers(model, to="torch")
    assert isinstance(model[0], vs.nn.BatchRenorm1d)


def test_sync_batchnorm_swaps_when_available() -> None:
    sync_cls = getattr(vs.nn, "SyncBatchNorm", None)
    if sync_cls is None:
        pytest.skip("vitalstats.nn.SyncBatchNorm not available yet")
    model = torch.nn.Sequential(torch.nn.SyncBatchNorm(3))
    vs.nn.swap_norm_layers(model)
    assert type(model[0]) is sync_cls
    vs.nn.swap_norm_layers(model, to="torch")
    assert type(model[0]) is torch.nn.SyncBatchNorm


def test_unknown_target_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="'vitalstats' or 'torch'"):
        vs.nn.swap_norm_layers(torch.nn.Linear(2, 2), to="keras")  # type: ignore[arg-type]
