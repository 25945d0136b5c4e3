"""vs.nn.LayerNorm, GroupNorm, RMSNorm against torch.nn's over hypothesis-drawn shapes and dtypes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vitalstats as vs
from tests.nn._compare import assert_close, assert_matches_torch_or_is_more_accurate

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _check_against_torch(ours, theirs, shape, dtype, seed, scale, offset) -> None:
    """Output, input gradient and parameter gradients: ours vs torch vs a float64 twin."""
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.rand(p.shape, generator=torch.Generator().manual_seed(seed)) + 0.5)
    ours.load_state_dict(theirs.state_dict())
    reference = type(theirs)(**_kwargs(theirs)).double()
    reference.load_state_dict(theirs.state_dict())
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=generator, dtype=torch.float64) * scale + offset).to(dtype)
    grad = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
    results = []
    for layer, layer_input in ((ours, x), (theirs, x), (reference, x.double())):
        leaf = layer_input.clone().requires_grad_(True)
        y = layer(leaf)
        y.backward(grad.to(y.dtype))
        results.append((y, leaf.grad, [p.grad for p in layer.parameters()]))
    (y_o, gx_o, gp_o), (y_t, gx_t, gp_t), (y_r, gx_r, gp_r) = results
    assert y_o.dtype == y_t.dtype
    assert_matches_torch_or_is_more_accurate(y_o, y_t, y_r, dtype, "output")
    assert_matches_torch_or_is_more_accurate(gx_o, gx_t, gx_r, dtype, "input gradient")
    for a, b, r in zip(gp_o, gp_t, gp_r, strict=True):
        assert_matches_torch_or_is_more_accurate(a, b, r, dtype, "parameter gradient")


def _kwargs(layer: torch.nn.Module) -> dict:
    if isinstance(layer, torch.nn.GroupNorm):
        return {"num_groups": layer.num_groups, "num_channels": layer.num_channels,
                "eps": layer.eps, "affine": layer.affine, "bias": layer.bias is not None}  # fmt: skip
    kwargs = {"normalized_shape": layer.normalized_shape, "eps": layer.eps,
              "elementwise_affine": layer.elementwise_affine}  # fmt: skip
    if isinstance(layer, torch.nn.LayerNorm):
        kwargs["bias"] = layer.bias is not None
    return kwargs


problem = st.fixed_dictionaries({
    "batch": st.integers(1, 4),
    "middle": st.lists(st.integers(1, 4), max_size=2),
    "dtype": st.sampled_from(DTYPES),
    "seed": st.integers(0, 2**16),
    "scale": st.sampled_from([0.1, 1.0, 5.0]),
    "offset": st.sampled_from([0.0, 3.0]),
    "affine": st.booleans(),
    "bias": st.booleans(),
})  # fmt: skip


@settings(max_examples=30, deadline=None)
@given(problem, st.lists(st.integers(1, 6), min_size=1, max_size=2))
def test_layer_norm_matches_torch(p, normalized_shape) -> None:
    shape = (p["batch"], *p["middle"], *normalized_shape)
    kwargs = {"elementwise_affine": p["affine"], "bias": p["bias"], "dtype": p["dtype"]}
    ours, theirs = (
        vs.nn.LayerNorm(normalized_shape, **kwargs),
        torch.nn.LayerNorm(normalized_shape, **kwargs),
    )
    _check_against_torch(ours, theirs, shape, p["dtype"], p["seed"], p["scale"], p["offset"])


@settings(max_examples=30, deadline=None)
@given(problem, st.integers(1, 3), st.integers(1, 3))
def test_group_norm_matches_torch(p, groups, channels_per_group) -> None:
    channels = groups * channels_per_group
    shape = (p["batch"], channels, *p["middle"])
    kwargs = {"affine": p["affine"], "bias": p["bias"], "dtype": p["dtype"]}
    ours, theirs = (
        vs.nn.GroupNorm(groups, channels, **kwargs),
        torch.nn.GroupNorm(groups, channels, **kwargs),
    )
    if channels_per_group * max(1, torch.Size(p["middle"]).numel()) == 1:
        return  # one value per group: variance 0, both give 0 (checked in test_functional)
    _check_against_torch(ours, theirs, shape, p["dtype"], p["seed"], p["scale"], p["offset"])


@settings(max_examples=30, deadline=None)
@given(problem, st.lists(st.integers(1, 6), min_size=1, max_size=2), st.sampled_from([None, 1e-4]))
def test_rms_norm_matches_torch(p, normalized_shape, eps) -> None:
    shape = (p["batch"], *p["middle"], *normalized_shape)
    kwargs = {"eps": eps, "elementwise_affine": p["affine"], "dtype": p["dtype"]}
    ours, theirs = (
        vs.nn.RMSNorm(normalized_shape, **kwargs),
        torch.nn.RMSNorm(normalized_shape, **kwargs),
    )
    _check_against_torch(ours, theirs, shape, p["dtype"], p["seed"], p["scale"], p["offset"])


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (vs.nn.LayerNorm(8), torch.nn.LayerNorm(8)),
        (vs.nn.LayerNorm([2, 3], elementwise_affine=False), torch.nn.LayerNorm([2, 3], elementwise_affine=False)),
        (vs.nn.LayerNorm(4, bias=False), torch.nn.LayerNorm(4, bias=False)),
        (vs.nn.GroupNorm(2, 6), torch.nn.GroupNorm(2, 6)),
        (vs.nn.GroupNorm(3, 3, affine=False), torch.nn.GroupNorm(3, 3, affine=False)),
        (vs.nn.RMSNorm(5), torch.nn.RMSNorm(5)),
        (vs.nn.RMSNorm([2, 5], eps=1e-6, elementwise_affine=False), torch.nn.RMSNorm([2, 5], eps=1e-6, elementwise_affine=False)),
    ],
)  # fmt: skip
def test_repr_parameters_and_state_dict_match_torch(ours, theirs) -> None:
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_group_norm_constructor_rejects_groups_not_dividing_channels() -> None:
    with pytest.raises(
        ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"
    ):
        vs.nn.GroupNorm(4, 6)


@pytest.mark.parametrize(
    ("layer", "x", "match"),
    [
        (vs.nn.LayerNorm(8), torch.randn(2, 7), r"trailing dims \(8,\).*\(2, 7\)"),
        (vs.nn.GroupNorm(2, 4), torch.randn(2, 6, 3), r"expected 4 channels.*\(2, 6, 3\).*num_channels=6"),
        (vs.nn.RMSNorm(3), torch.ones(2, 3, dtype=torch.long), r"floating point.*torch\.int64"),
    ],
)  # fmt: skip
def test_bad_input_raises_value_error(layer, x, match) -> None:
    with pytest.raises(ValueError, match=match):
        layer(x)


def test_layer_norm_standardises_each_sample_whatever_the_batch_size() -> None:
    """The seeds' point: LayerNorm statistics are per sample, so batch 1 works in training."""
    x = torch.randn(1, 32, dtype=torch.float64) * 3 + 2
    y = vs.nn.LayerNorm(32, dtype=torch.float64)(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(1, dtype=torch.float64), atol=1e-12, rtol=0)
    var = x.var(-1, unbiased=False)
    torch.testing.assert_close(
        y.var(-1, unbiased=False), var / (var + 1e-5), atol=1e-12, rtol=1e-12
    )


@pytest.mark.parametrize(
    ("layer", "shape"),
    [(vs.nn.LayerNorm(3), (0, 3)), (vs.nn.GroupNorm(2, 4), (0, 4, 3)), (vs.nn.RMSNorm(3), (0, 3))],
)
def test_empty_batch_gives_empty_output_and_gradient(layer, shape) -> None:
    x = torch.randn(shape, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert y.shape == x.grad.shape == shape


def test_group_norm_keeps_channels_last_and_matches_torch() -> None:
    x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last).requires_grad_(True)
    ours, theirs = vs.nn.GroupNorm(4, 8), torch.nn.GroupNorm(4, 8)
    y_ours, y_theirs = ours(x), theirs(x)
    assert y_ours.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y_theirs)
    (g_ours,) = torch.autograd.grad(y_ours, x, grad)
    (g_theirs,) = torch.autograd.grad(y_theirs, x, grad)
    assert g_ours.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda nn: nn.LayerNorm(8), (4, 8)),
        (lambda nn: nn.GroupNorm(2, 4), (3, 4, 5)),
        (lambda nn: nn.RMSNorm(8), (4, 8)),
        (lambda nn: nn.RMSNorm([2, 4], elementwise_affine=False), (3, 2, 4)),
    ],
    ids=["LayerNorm", "GroupNorm", "RMSNorm", "RMSNorm-no-weight"],
)
def test_torch_func_grad_vmap_and_per_sample_gradients_work_as_in_torch(make, shape):
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    xs = torch.randn(2, *shape) * 2 + 1
    results = []
    for nn in (vs.nn, torch.nn):
        layer = make(nn)
        params = {k: v.detach() for k, v in layer.named_parameters()}

        def loss(p, x, layer=layer):
            return functional_call(layer, p, (x,)).square().sum()

        per_sample = vmap(grad(loss), in_dims=(None, 0))(params, xs) if params else {}
        dx = grad(loss, argnums=1)(params, xs[0])
        results.append((dx, vmap(layer)(xs), per_sample))
    (dx_ours, y_ours, per_ours), (dx_torch, y_torch, per_torch) = results
    assert_close(dx_ours, dx_torch, torch.float32, "grad x")
    assert_close(y_ours, y_torch, torch.float32, "vmap output")
    for name in per_torch:
        assert_close(per_ours[name], per_torch[name], torch.float32, f"per-sample {name}")
