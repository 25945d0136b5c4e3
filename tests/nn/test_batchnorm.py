"""vs.nn.BatchNorm1d/2d/3d against torch.nn's: outputs, gradients, running buffers, state_dict,
modes, dtypes, memory format, the non-finite guard and the errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vitalstats as vs
from tests.nn._compare import assert_close, assert_matches_torch_or_is_more_accurate
from vitalstats.nn import _batch_norm
from vitalstats.stats import native

PAIRS = {1: (vs.nn.BatchNorm1d, torch.nn.BatchNorm1d), 2: (vs.nn.BatchNorm2d, torch.nn.BatchNorm2d),
         3: (vs.nn.BatchNorm3d, torch.nn.BatchNorm3d)}  # fmt: skip
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _twins(spatial: int, channels: int, **kwargs) -> tuple[torch.nn.Module, torch.nn.Module]:
    ours_cls, torch_cls = PAIRS[max(spatial, 1)]
    torch_layer = torch_cls(channels, **kwargs)
    ours = ours_cls(channels, **kwargs)
    if torch_layer.affine:  # non-trivial affine parameters, the same in both
        with torch.no_grad():
            torch_layer.weight.uniform_(0.5, 1.5)
            if torch_layer.bias is not None:
                torch_layer.bias.normal_()
    ours.load_state_dict(torch_layer.state_dict())
    return ours, torch_layer


@st.composite
def bn_problems(draw):
    spatial = draw(st.sampled_from([0, 1, 2, 3]))  # 0: (N, C); 1: (N, C, L); ...
    batch = draw(st.integers(2, 5))
    channels = draw(st.integers(1, 5))
    sizes = [draw(st.integers(1, 4)) for _ in range(spatial)]
    return {
        "shape": (batch, channels, *sizes),
        "spatial": spatial,
        "dtype": draw(st.sampled_from(DTYPES)),
        "momentum": draw(st.sampled_from([0.1, 0.5, None])),
        "affine": draw(st.booleans()),
        "scale": draw(st.sampled_from([0.1, 1.0, 7.0])),
        "offset": draw(st.sampled_from([0.0, -3.0, 20.0])),
        "seed": draw(st.integers(0, 2**16)),
        "layer_in_input_dtype": draw(st.booleans()),  # else float32 layer (mixed precision)
    }


def _layer_dtype(p) -> torch.dtype:
    dtype = p["dtype"]
    return dtype if p["layer_in_input_dtype"] or dtype == torch.float64 else torch.float32


@settings(max_examples=40, deadline=None)
@given(bn_problems())
def test_twenty_training_steps_match_torch(p) -> None:
    """Forward output, input/weight/bias gradients every step; running buffers after 20.
    Low precision: no less accurate than torch against a float64 twin (see _compare)."""
    _twenty_steps_match_torch(p)


@settings(max_examples=25, deadline=None)
@given(bn_problems())
def test_twenty_training_steps_match_torch_through_the_c_row_kernels(p) -> None:
    """The same where the C kernels (``vitalstats.stats.native``) take every float32 input
    laid out as rows of channels, as they take inputs of 2^21 values and up."""
    if native.library() is None:
        pytest.skip(f"the C kernels cannot be built here: {native.status()[1]}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_batch_norm, "_ROWS_MIN_VALUES", 1)
        _twenty_steps_match_torch(p)


def _twenty_steps_match_torch(p) -> None:
    dtype = p["dtype"]
    kwargs = {"momentum": p["momentum"], "affine": p["affine"]}
    ours, theirs = _twins(p["spatial"], p["shape"][1], dtype=_layer_dtype(p), **kwargs)
    reference = PAIRS[max(p["spatial"], 1)][1](p["shape"][1], dtype=torch.float64, **kwargs)
    reference.load_state_dict(theirs.state_dict())
    generator = torch.Generator().manual_seed(p["seed"])
    for _ in range(20):
        x = torch.randn(p["shape"], generator=generator, dtype=torch.float64)
        x = (x * p["scale"] + p["offset"]).to(dtype)
        grad = torch.randn(p["shape"], generator=generator, dtype=torch.float64).to(dtype)
        results = []
        for layer, layer_input in ((ours, x), (theirs, x), (reference, x.double())):
            leaf = layer_input.clone().requires_grad_(True)
            y = layer(leaf)
            y.backward(grad.to(y.dtype))
            results.append((y, leaf.grad, layer))
        (y_ours, gx_ours, _), (y_theirs, gx_theirs, _), (y_ref, gx_ref, _) = results
        assert y_ours.dtype == y_theirs.dtype == dtype
        assert_matches_torch_or_is_more_accurate(y_ours, y_theirs, y_ref, dtype, "output")
        assert_matches_torch_or_is_more_accurate(gx_ours, gx_theirs, gx_ref, dtype, "input grad")
        if p["affine"]:
            for name in ("weight", "bias"):
                grads = [getattr(layer, name).grad for layer in (ours, theirs, reference)]
                assert_matches_torch_or_is_more_accurate(*grads, dtype, f"{name} gradient")
            for layer in (ours, theirs, reference):
                layer.zero_grad()
    for name in ("running_mean", "running_var"):
        buffers = [getattr(layer, name) for layer in (ours, theirs, reference)]
        assert_matches_torch_or_is_more_accurate(*buffers, dtype, name)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 20


EXACT_CASES = {  # inputs whose statistics torch's own kernel computes in vs.nn too
    "2-D float32": ((64, 48), torch.float32, torch.float32, None),
    "(N, C, 1) float32": ((32, 24, 1), torch.float32, torch.float32, None),
    "channels_last float32": ((8, 16, 5, 5), torch.float32, torch.float32, torch.channels_last),
    "2-D float64": ((40, 12), torch.float64, torch.float64, None),
    "bfloat16 into a float32 layer": ((64, 48), torch.bfloat16, torch.float32, None),
    "float16 into a float32 layer": ((8, 16, 3, 3), torch.float16, torch.float32,
                                     torch.channels_last),
    "bfloat16 layer": ((64, 48), torch.bfloat16, torch.bfloat16, None),
}  # fmt: skip


@pytest.mark.parametrize("momentum", [0.1, 0.37, None])
@pytest.mark.parametrize("case", list(EXACT_CASES))
def test_running_buffers_are_torchs_bit_for_bit_where_torchs_kernel_computes_statistics(
    case, momentum
) -> None:
    """There the buffers are updated by torch's kernel itself (copies, then the guard): after
    20 steps running_mean/running_var equal torch's exactly, as do the outputs (a lerp of the
    buffers differs from torch's float32 rounding by an ulp per step)."""
    shape, dtype, layer_dtype, memory_format = EXACT_CASES[case]
    ours, theirs = _twins(len(shape) - 2, shape[1], momentum=momentum, dtype=layer_dtype)
    generator = torch.Generator().manual_seed(7)
    for step in range(20):
        x = (torch.randn(shape, generator=generator) * (1 + step) + 3).to(dtype)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        assert torch.equal(ours(x), theirs(x))
    assert torch.equal(ours.running_mean, theirs.running_mean)
    assert torch.equal(ours.running_var, theirs.running_var)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 20
    biased = x.double().transpose(0, 1).reshape(shape[1], -1).var(1, correction=0)
    rtol = 2e-2 if layer_dtype == torch.bfloat16 else 1e-5  # the statistics' dtype
    torch.testing.assert_close(ours.batch_var.double(), biased, rtol=rtol, atol=1e-6)


LEAN_CASES = {
    "float32": (torch.float32, 0.1, True),
    "bfloat16 input": (torch.bfloat16, 0.1, True),
    "float16 input, momentum None": (torch.float16, None, True),
    "float32, no affine, unguarded": (torch.float32, 0.3, False),
    "bfloat16 layer": (torch.bfloat16, 0.1, True),
}


@pytest.mark.parametrize("with_c", [True, False], ids=["C helpers", "ATen fallback"])
@pytest.mark.parametrize("case", list(LEAN_CASES))
def test_the_lean_training_step_is_the_general_forward_bit_for_bit(case, with_c, monkeypatch):
    """(N, C) training steps through ``_rows_training_forward`` give the general forward's
    outputs, input gradients, buffers, count and batch statistics exactly, a NaN batch in the
    middle included (restored from the snapshot, or torch's poisoning when unguarded)."""
    dtype, momentum, guarded = LEAN_CASES[case]
    if not with_c:
        monkeypatch.setattr(native, "library", lambda: None)
    layer_dtype = torch.bfloat16 if case == "bfloat16 layer" else torch.float32
    lean = vs.nn.BatchNorm1d(16, momentum=momentum, affine=guarded, skip_nonfinite=guarded,
                             dtype=layer_dtype)  # fmt: skip
    general = copy.deepcopy(lean)
    general._rows_training_forward = lambda x: None  # the instance attribute hides the method
    taken, method = [], lean._rows_training_forward

    def spy(x: torch.Tensor) -> torch.Tensor | None:
        output = method(x)
        taken.append(output is not None)
        return output

    lean._rows_training_forward = spy
    generator = torch.Generator().manual_seed(11)
    warnings.simplefilter("ignore", vs.nn.NonFiniteBatchWarning)
    for step in range(6):
        x = (torch.randn(32, 16, generator=generator) * (step + 1) - 2).to(dtype)
        if step == 3:
            x[5, 2] = float("nan")
        outputs = []
        for layer in (lean, general):
            xs = x.clone().requires_grad_()
            y = layer(xs)
            y.float().square().sum().backward()
            outputs.append((y, xs.grad, *layer.state_dict().values(), layer.batch_mean,
                            layer.batch_var))  # fmt: skip
        for ours, reference in zip(*outputs, strict=True):
            torch.testing.assert_close(ours, reference, rtol=0, atol=0, equal_nan=True)
    assert taken == [True] * 6
    assert int(lean.num_batches_tracked) == (5 if guarded else 6)


@settings(max_examples=15, deadline=None)
@given(bn_problems())
def test_eval_matches_torch_and_leaves_buffers_untouched(p) -> None:
    dtype = p["dtype"]
    ours, theirs = _twins(p["spatial"], p["shape"][1], affine=p["affine"], dtype=_layer_dtype(p))
    generator = torch.Generator().manual_seed(p["seed"])
    for _ in range(3):  # give the buffers non-default values
        x = torch.randn(p["shape"], generator=generator) * p["scale"] + p["offset"]
        ours(x.to(dtype)), theirs(x.to(dtype))
    ours.eval(), theirs.eval()
    buffers_before = {k: v.clone() for k, v in ours.state_dict().items()}
    x = (torch.randn(p["shape"], generator=generator) * p["scale"] + p["offset"]).to(dtype)
    reference = PAIRS[max(p["spatial"], 1)][1](
        p["shape"][1], affine=p["affine"], dtype=torch.float64
    )
    reference.load_state_dict(theirs.state_dict())
    reference.eval()
    y_ref = reference(x.double())
    assert_matches_torch_or_is_more_accurate(ours(x), theirs(x), y_ref, dtype, "eval output")
    for key, value in ours.state_dict().items():
        assert torch.equal(value, buffers_before[key]), key


def test_normalises_with_biased_variance_and_tracks_the_unbiased_one() -> None:
    x = torch.randn(5, 3, dtype=torch.float64) * 4 + 2
    bn = vs.nn.BatchNorm1d(3, momentum=1.0, dtype=torch.float64)
    y = bn(x)
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, x.var(0, unbiased=True), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_mean, x.mean(0), rtol=1e-12, atol=1e-12)


def test_momentum_none_is_the_cumulative_average_of_batch_statistics() -> None:
    bn = vs.nn.BatchNorm1d(2, momentum=None, dtype=torch.float64)
    batches = [torch.randn(6, 2, dtype=torch.float64) * (i + 1) for i in range(5)]
    for x in batches:
        bn(x)
    mean_of_means = torch.stack([x.mean(0) for x in batches]).mean(0)
    mean_of_vars = torch.stack([x.var(0, unbiased=True) for x in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean_of_means, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, mean_of_vars, rtol=1e-12, atol=1e-12)


def test_batch_statistics_attributes_are_detached_float32_and_not_in_state_dict() -> None:
    bn = vs.nn.BatchNorm2d(3, dtype=torch.float64)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64).to(torch.bfloat16).requires_grad_(True)
    bn(x)
    xd = x.detach().double()
    assert bn.batch_mean.dtype == bn.batch_var.dtype == torch.float32
    assert not bn.batch_mean.requires_grad and not bn.batch_var.requires_grad
    torch.testing.assert_close(bn.batch_mean.double(), xd.mean((0, 2, 3)), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        bn.batch_var.double(), xd.var((0, 2, 3), unbiased=False), rtol=1e-6, atol=1e-6
    )
    assert "batch_mean" not in bn.state_dict() and "batch_var" not in bn.state_dict()


def test_channels_last_input_gives_channels_last_output_and_gradient() -> None:
    x = torch.randn(4, 6, 5, 3).to(memory_format=torch.channels_last).requires_grad_(True)
    ours, theirs = _twins(2, 6)
    y = ours(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.backward(torch.ones_like(y))
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, theirs(x), torch.float32, "channels_last output")


def test_half_input_with_float32_layer_keeps_input_dtype_and_float32_statistics() -> None:
    ours, theirs = _twins(1, 4)
    x = (torch.randn(8, 4, 3) * 3 + 1).half()
    y = ours(x)
    assert y.dtype == torch.float16 and ours.running_var.dtype == torch.float32
    assert_close(y, theirs(x), torch.float16, "mixed precision output")
    assert_close(ours.running_var, theirs.running_var, torch.float32, "running_var")


def test_state_dict_loads_from_torch_and_back_with_the_same_keys() -> None:
    theirs = torch.nn.BatchNorm2d(5, momentum=None, affine=True)
    theirs(torch.randn(4, 5, 3, 3))
    ours = vs.nn.BatchNorm2d(5, momentum=None)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    back = torch.nn.BatchNorm2d(5)
    back.load_state_dict(ours.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_constructor_matches_torch_defaults_and_repr() -> None:
    for ours_cls, torch_cls in PAIRS.values():
        for kwargs in ({}, {"affine": False}, {"bias": False}, {"track_running_stats": False}):
            ours, theirs = ours_cls(7, **kwargs), torch_cls(7, **kwargs)
            assert repr(ours) == repr(theirs)
            assert ours._version == theirs._version == 2
            assert [n for n, _ in ours.named_parameters()] == [
                n for n, _ in theirs.named_parameters()
            ]
            assert list(ours.state_dict()) == list(theirs.state_dict())


def test_checkpoint_without_num_batches_tracked_loads_as_version_1() -> None:
    """torch's habit: a version-1 state dict (no num_batches_tracked) loads with count 0."""
    state = torch.nn.BatchNorm1d(3).state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    bn = vs.nn.BatchNorm1d(3)
    bn.num_batches_tracked.fill_(7)
    bn.load_state_dict(state)
    assert int(bn.num_batches_tracked) == 7  # kept, as torch keeps its own


def test_track_running_stats_false_uses_batch_statistics_in_eval_too() -> None:
    ours, theirs = _twins(1, 3, track_running_stats=False)
    ours.eval(), theirs.eval()
    x = torch.randn(6, 3)
    assert_close(ours(x), theirs(x), torch.float32, "eval without buffers")


def test_flipping_track_running_stats_after_construction_behaves_as_in_torch() -> None:
    """ERRATA (seed 003): the buffers stay; training stops updating them; eval still uses them."""
    ours, theirs = _twins(1, 3)
    first = torch.randn(8, 3) + 2
    for layer in (ours, theirs):
        layer(first)
        layer.track_running_stats = False
    x = torch.randn(8, 3)
    assert_close(ours(x), theirs(x), torch.float32, "training output")
    assert_close(ours.running_mean, theirs.running_mean, torch.float32, "running_mean")
    ours.eval(), theirs.eval()
    assert_close(ours(x), theirs(x), torch.float32, "eval output")


def test_nonfinite_batch_leaves_running_stats_and_warns_once_naming_the_layer() -> None:
    bn = vs.nn.BatchNorm1d(3)
    bn.layer_name = "encoder.bn1"
    bn(torch.randn(8, 3))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    bad = torch.randn(8, 3)
    bad[2, 1] = float("inf")
    with pytest.warns(vs.nn.NonFiniteBatchWarning, match=r"encoder\.bn1.*skip_nonfinite=False"):
        bn(bad)
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second bad batch does not warn again
        bn(bad)
    bn(torch.randn(8, 3))
    assert int(bn.num_batches_tracked) == 2


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5)], ids=["torch's kernel", "two-pass"])
def test_the_guard_judges_the_batch_not_buffers_that_were_already_nan(shape) -> None:
    """Buffers loaded as NaN stay NaN (as in torch); finite batches are still counted, silently."""
    bn = vs.nn.BatchNorm1d(3)
    bn.running_var[1] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bn(torch.randn(shape))
    assert int(bn.num_batches_tracked) == 1 and torch.isnan(bn.running_var[1])


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (4, 3, 2, 2)])
def test_two_forwards_before_one_backward_work_as_in_torch_also_after_a_nonfinite_batch(
    shape,
) -> None:
    """Two views through one layer, then one backward (siamese and contrastive training):
    torch's gradients; a non-finite second batch, restored by the guard, does not break the
    backward of the first (the kernel's node saved the buffers)."""
    ours, theirs = _twins(len(shape) - 2, shape[1])
    x = torch.randn(shape)
    grads = []
    for layer in (ours, theirs):
        xs = x.clone().requires_grad_()
        (layer(xs).square().sum() + layer(xs * 2 + 1).sum()).backward()
        grads.append(xs.grad)
    assert_close(grads[0], grads[1], torch.float32, "input gradient")
    bad = x.clone().requires_grad_()
    with pytest.warns(vs.nn.NonFiniteBatchWarning):
        loss = ours(bad).square().sum() + ours(bad * torch.inf).nan_to_num().sum()
    loss.backward()
    assert bad.grad is not None and int(ours.num_batches_tracked) == 3


def test_vmap_in_training_with_unbatched_buffers_raises_torchs_error_with_the_fix() -> None:
    """torch raises here too; ours names the layer and says how to drop the buffers, and the
    layer then runs under vmap with batch statistics."""
    from torch.func import functional_call, vmap

    bn = vs.nn.BatchNorm1d(4)
    params = {k: v.detach() for k, v in bn.named_parameters()}
    xs = torch.randn(3, 8, 4)
    with pytest.raises(RuntimeError, match=r"BatchNorm1d\(4\).*were not batched.*Fix:.*= None"):
        vmap(lambda x: functional_call(bn, params, (x,)))(xs)
    bn.running_mean = bn.running_var = bn.num_batches_tracked = None
    bn.track_running_stats = False
    theirs = torch.nn.BatchNorm1d(4)
    torch.func.replace_all_batch_norm_modules_(theirs)
    ys = vmap(lambda x: functional_call(bn, params, (x,)))(xs)
    assert_close(ys, vmap(theirs)(xs), torch.float32, "vmap output")


COMPILED_CASES = {
    "(N, C)": ((16, 8), torch.float32, None),
    "(N, C, 1) bfloat16 into float32": ((16, 8, 1), torch.bfloat16, None),
    "NCHW": ((4, 8, 3, 3), torch.float32, None),
    "channels_last": ((4, 8, 3, 3), torch.float32, torch.channels_last),
}


@pytest.mark.parametrize("case", list(COMPILED_CASES))
def test_under_torch_compile_training_matches_torch_and_the_guard_holds(case) -> None:
    """torch.compile of a training layer: outputs, input gradients and buffers within rounding
    of torch's compiled layer (inductor decomposes the kernel, bfloat16 backward included, for
    both), or closer to float64, and a NaN batch leaves the buffers exactly as they were,
    uncounted, with the warning."""
    shape, dtype, memory_format = COMPILED_CASES[case]
    ours, theirs = _twins(len(shape) - 2, shape[1])
    exact = copy.deepcopy(theirs).double()
    compiled, theirs_compiled = torch.compile(ours), torch.compile(theirs)
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):
        x = (torch.randn(shape, generator=generator) * 2 + 1).to(dtype)
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        outputs = []
        for layer, input_dtype in ((compiled, dtype), (theirs_compiled, dtype),
                                   (exact, torch.float64)):  # fmt: skip
            xs = x.to(input_dtype, copy=True).requires_grad_()
            y = layer(xs)
            y.double().square().sum().backward()
            outputs.append((y, xs.grad))
        (y, grad), (y_torch, grad_torch), (y_exact, grad_exact) = outputs
        assert_matches_torch_or_is_more_accurate(y, y_torch, y_exact, dtype, "output")
        assert_matches_torch_or_is_more_accurate(grad, grad_torch, grad_exact, dtype, "gradient")
    assert_close(ours.running_mean, theirs.running_mean, torch.float32, "running_mean")
    assert_close(ours.running_var, theirs.running_var, torch.float32, "running_var")
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.warns(vs.nn.NonFiniteBatchWarning):
        compiled(bad)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_skip_nonfinite_false_is_torchs_poisoning_behaviour() -> None:
    ours = vs.nn.BatchNorm1d(3, skip_nonfinite=False)
    theirs = torch.nn.BatchNorm1d(3)
    bad = torch.randn(8, 3)
    bad[0, 0] = float("nan")
    ours(bad), theirs(bad)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, equal_nan=True)
    assert torch.isnan(ours.running_mean[0]) and int(ours.num_batches_tracked) == 1


def test_deepcopy_and_pickle_of_a_layer_work() -> None:
    bn = vs.nn.BatchNorm1d(3)
    bn(torch.randn(4, 3))
    clone = copy.deepcopy(bn)
    assert torch.equal(clone.running_mean, bn.running_mean)


@pytest.mark.parametrize(
    ("layer", "x", "match"),
    [
        (vs.nn.BatchNorm1d(4), torch.randn(1, 4), r"BatchNorm1d\(4\): expected more than 1 value per channel.*\(1, 4\).*model\.eval\(\).*LayerNorm or GroupNorm"),
        (vs.nn.BatchNorm1d(4), torch.randn(1, 4, 1), r"more than 1 value per channel"),
        (vs.nn.BatchNorm2d(4), torch.randn(2, 3, 5, 5), r"expected 4 channels.*got 3.*\(2, 3, 5, 5\).*num_features=3"),
        (vs.nn.BatchNorm2d(4), torch.randn(2, 4, 5), r"expected 4-D \(N, C, H, W\) input, got 3-D.*\(2, 4, 5\)"),
        (vs.nn.BatchNorm1d(4), torch.randn(2, 4, 5, 5), r"expected 2-D \(N, C\) or 3-D \(N, C, L\) input, got 4-D"),
        (vs.nn.BatchNorm3d(4), torch.ones(2, 4, 2, 2, 2, dtype=torch.int32), r"floating point.*torch\.int32"),
    ],
)  # fmt: skip
def test_bad_input_raises_value_error_naming_layer_shape_and_fix(layer, x, match) -> None:
    with pytest.raises(ValueError, match=match):
        layer(x)


def test_batch_of_one_image_works_in_training_as_in_torch() -> None:
    """ERRATA (seed 002): BatchNorm2d with batch 1 and H*W > 1 trains on one image's statistics."""
    ours, theirs = _twins(2, 3)
    x = torch.randn(1, 3, 4, 4)
    assert_close(ours(x), theirs(x), torch.float32, "batch of one image")


def test_single_sample_works_in_eval() -> None:
    bn = vs.nn.BatchNorm1d(4).eval()
    assert bn(torch.randn(1, 4)).shape == (1, 4)


def test_empty_batch_gives_empty_output_counts_the_batch_and_keeps_buffers_like_torch() -> None:
    ours, theirs = _twins(1, 3)
    x = torch.randn(0, 3, requires_grad=True)
    y_ours, y_theirs = ours(x), theirs(x)
    assert y_ours.shape == y_theirs.shape == (0, 3)
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    y_ours.sum().backward()
    assert x.grad.shape == (0, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nonfinite_warning_on_cuda_arrives_without_a_host_sync() -> None:
    bn = vs.nn.BatchNorm1d(3, device="cuda")
    bad = torch.randn(8, 3, device="cuda")
    bad[0, 0] = float("nan")
    with pytest.warns(vs.nn.NonFiniteBatchWarning, match=r"BatchNorm1d\(3\)"):
        bn(bad)
        torch.cuda.synchronize()  # the flag's copy has landed; the next call reads it
        bn(torch.randn(8, 3, device="cuda"))
    assert bool(torch.isfinite(bn.running_mean).all()) and int(bn.num_batches_tracked) == 1


def test_eps_zero_is_rejected_in_training_as_in_torch_and_allowed_in_eval() -> None:
    ours, theirs = _twins(1, 3, eps=0.0)
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="eps must be positive"):
        theirs(x)
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\): eps must be positive.*got eps=0\.0"):
        ours(x)
    ours.eval(), theirs.eval()
    assert_close(ours(x), theirs(x), torch.float32, "eval output with eps=0")


@pytest.mark.parametrize("layout", ["2d", "nchw", "channels_last"])
def test_torch_func_grad_vmap_and_per_sample_gradients_work_as_in_torch(layout, monkeypatch):
    """torch.func transforms (grad, vmap, vmap of grad: per-sample gradients) run through
    torch's kernel, whose batching rules they need, and give torch's results; in eval mode
    the running buffers are read, as in torch."""
    from torch.func import functional_call, grad, vmap

    monkeypatch.setattr(_batch_norm, "_ROWS_MIN_VALUES", 1)  # the C kernels would otherwise run
    shape = {"2d": (6, 4), "nchw": (3, 4, 5, 5), "channels_last": (3, 4, 5, 5)}[layout]
    torch.manual_seed(0)
    xs = torch.randn(2, *shape) * 2 + 3
    if layout == "channels_last":
        xs = torch.stack([x.to(memory_format=torch.channels_last) for x in xs])
    cls = (vs.nn.BatchNorm1d, torch.nn.BatchNorm1d) if layout == "2d" else (
        vs.nn.BatchNorm2d, torch.nn.BatchNorm2d
    )  # fmt: skip
    results = []
    for layer_cls in cls:
        layer = layer_cls(4, track_running_stats=False)
        params = {k: v.detach() for k, v in layer.named_parameters()}

        def loss(p, x, layer=layer):
            return functional_call(layer, p, (x,)).square().sum()

        tracked = layer_cls(4).eval()
        with torch.no_grad():
            tracked.running_mean.uniform_(-1, 1)
            tracked.running_var.uniform_(0.5, 2)
        results.append((grad(loss)(params, xs[0]), vmap(layer)(xs),
                        vmap(grad(loss), in_dims=(None, 0))(params, xs), tracked))  # fmt: skip
    (g_ours, y_ours, per_ours, eval_ours), (g_torch, y_torch, per_torch, eval_torch) = results
    eval_ours.load_state_dict(eval_torch.state_dict())
    for name in ("weight", "bias"):
        assert_close(g_ours[name], g_torch[name], torch.float32, f"grad {name}")
        assert_close(per_ours[name], per_torch[name], torch.float32, f"per-sample {name}")
    assert_close(y_ours, y_torch, torch.float32, "vmap output")
    assert_close(vmap(eval_ours)(xs), vmap(eval_torch)(xs), torch.float32, "vmap eval output")
