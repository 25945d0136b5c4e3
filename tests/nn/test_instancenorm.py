"""vs.nn.InstanceNorm1d/2d against torch.nn's."""

from __future__ import annotations

import pytest
import torch

import vitalstats as vs
from tests.nn._compare import assert_close


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize(
    "kwargs", [{}, {"affine": True}, {"track_running_stats": True, "momentum": 0.3}]
)
def test_training_then_eval_match_torch(dims: int, kwargs: dict) -> None:
    ours_cls = vs.nn.InstanceNorm1d if dims == 1 else vs.nn.InstanceNorm2d
    torch_cls = torch.nn.InstanceNorm1d if dims == 1 else torch.nn.InstanceNorm2d
    ours, theirs = ours_cls(3, **kwargs), torch_cls(3, **kwargs)
    assert repr(ours) == repr(theirs) and list(ours.state_dict()) == list(theirs.state_dict())
    shape = (4, 3, 5) if dims == 1 else (4, 3, 3, 4)
    for _ in range(3):
        x = torch.randn(shape) * 2 + 1
        assert_close(ours(x), theirs(x), torch.float32, "training output")
    for name, buffer in theirs.named_buffers():
        assert_close(dict(ours.named_buffers())[name], buffer, torch.float32, name)
    ours.eval(), theirs.eval()
    assert_close(ours(x), theirs(x), torch.float32, "eval output")
    assert_close(ours(x[0]), theirs(x[0]), torch.float32, "unbatched input")


def test_wrong_channel_count_is_an_error_with_parameters_and_a_warning_without() -> None:
    """torch's rule: num_features is only used by the affine parameters and running buffers."""
    x = torch.randn(2, 4, 5)
    for layer in (vs.nn.InstanceNorm1d(3, affine=True), torch.nn.InstanceNorm1d(3, affine=True)):
        with pytest.raises(
            ValueError, match=r"size at dim=1 to match num_features \(3\), but got: 4"
        ):
            layer(x)
    with pytest.warns(UserWarning, match=r"num_features \(3\), but got: 4.*unused"):
        y = vs.nn.InstanceNorm1d(3)(x)
    torch.testing.assert_close(y, torch.nn.functional.instance_norm(x))


def test_old_checkpoint_with_running_stats_is_reported_like_torch() -> None:
    state = torch.nn.InstanceNorm1d(3, track_running_stats=True).state_dict()
    del state._metadata[""]["version"]  # a pre-versioning checkpoint
    for layer in (vs.nn.InstanceNorm1d(3), torch.nn.InstanceNorm1d(3)):
        with pytest.raises(RuntimeError, match="Unexpected running stats buffer"):
            layer.load_state_dict(state)
