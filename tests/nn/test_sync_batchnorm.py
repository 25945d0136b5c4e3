"""SyncBatchNorm: two gloo ranks holding batches A and B must match one process running
torch's BatchNorm on cat(A, B) -- outputs, input and parameter gradients, running statistics
-- within ``torch.testing.assert_close(atol=rtol=1e-5)`` in float32 and 1e-10 in float64."""

from __future__ import annotations

import datetime
import inspect
import time
import zlib

import numpy as np
import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

import vitalstats as vs
from tests.helpers.distributed import run_ranks
from vitalstats.nn.batchnorm import _BatchNorm
from vitalstats.nn.sync_batchnorm import (
    SyncBatchNorm,
    convert_sync_batchnorm,
    local_moments,
    merge_moments,
)

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 3e-2}


# ---------------------------------------------------------------- equivalence on two ranks


def _make_case(
    shapes: tuple[tuple[int, ...], tuple[int, ...]],
    dtype: torch.dtype,
    steps: int = 3,
    channels_last: bool = False,
    **layer_kwargs,
) -> dict:
    """Random per-step inputs and output gradients for each rank, and random affine params."""
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shapes, dtype, steps)).encode()))
    channels = shapes[0][1]
    data = []
    for step in range(steps):
        per_rank = []
        for shape in shapes:
            x = torch.randn(shape, generator=gen, dtype=dtype) * (1.5 + step) + 0.7 * step
            g = torch.randn(shape, generator=gen, dtype=dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            per_rank.append((x, g))
        data.append(per_rank)
    weight = torch.rand(channels, generator=gen, dtype=dtype) + 0.5
    bias = torch.randn(channels, generator=gen, dtype=dtype)
    return {"data": data, "weight": weight, "bias": bias, "kwargs": layer_kwargs, "dtype": dtype}


CASES = {
    "float32 equal batches": _make_case(((4, 3, 5, 5), (4, 3, 5, 5)), torch.float32),
    "float32 unequal batches": _make_case(((2, 3, 5, 5), (7, 3, 5, 5)), torch.float32),
    "float32 channels_last": _make_case(
        ((3, 4, 3, 3), (5, 4, 3, 3)), torch.float32, channels_last=True
    ),
    "float32 3d no affine": _make_case(
        ((2, 2, 3, 3, 3), (3, 2, 3, 3, 3)), torch.float32, affine=False
    ),
    "float64 equal batches": _make_case(((6, 4, 7), (6, 4, 7)), torch.float64),
    "float64 unequal (N, C), cumulative": _make_case(
        ((3, 5), (10, 5)), torch.float64, momentum=None
    ),
    "float64 empty rank": _make_case(((0, 3, 4, 4), (5, 3, 4, 4)), torch.float64),
    "float64 no running statistics": _make_case(
        ((5, 3, 4), (2, 3, 4)), torch.float64, track_running_stats=False
    ),
    "bfloat16 unequal batches": _make_case(((3, 2, 4, 4), (5, 2, 4, 4)), torch.bfloat16, steps=2),
    "float64 no bias, momentum 0.3": _make_case(
        ((4, 3, 2, 2), (1, 3, 2, 2)), torch.float64, momentum=0.3, bias=False
    ),
}


def _train_ranks(rank: int, world_size: int, cases: dict) -> dict:
    """On each rank: a SyncBatchNorm trained on this rank's share; returns what it saw."""
    results = {}
    for name, case in cases.items():
        torch.manual_seed(0)
        channels = case["weight"].shape[0]
        layer = SyncBatchNorm(channels, dtype=case["dtype"], **case["kwargs"])
        with torch.no_grad():
            if layer.weight is not None:
                layer.weight.copy_(case["weight"])
            if layer.bias is not None:
                layer.bias.copy_(case["bias"])
        steps = []
        for per_rank in case["data"]:
            x, g = per_rank[rank]
            x = x.clone().requires_grad_(True)
            layer.zero_grad()
            y = layer(x)
            y.backward(g)
            params = [p.grad.clone() for p in layer.parameters()]
            for grad in params:  # the sum over ranks: what DDP would hand the optimiser
                dist.all_reduce(grad)
            steps.append(
                {
                    "y": y.detach(),
                    "dx": x.grad,
                    "param_grads": params,
                    "buffers": [b.clone() for b in layer.buffers()],
                    "batch_mean": layer.batch_mean,
                    "batch_var": layer.batch_var,
                }
            )
        eval_out = None
        if rank == 0:  # eval runs no collective: rank 1 not calling must not block rank 0
            layer.eval()
            eval_out = layer(case["data"][0][0][0]).detach()
        results[name] = {"steps": steps, "eval": eval_out}
    results["ddp"] = _ddp_training(rank)
    return results


def _small_net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, bias=False),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 3),
    ).double()


def _ddp_batches() -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Three steps of (inputs, targets) for ranks 0 and 1, batch sizes 3 and 6."""
    gen = torch.Generator().manual_seed(7)
    return [
        [
            (
                torch.randn(n, 2, 4, 4, generator=gen, dtype=torch.float64) + r,
                torch.randint(0, 3, (n,), generator=gen),
            )
            for r, n in enumerate((3, 6))
        ]
        for _ in range(3)
    ]


def _ddp_training(rank: int) -> list[torch.Tensor]:
    """SGD under DDP (which averages the ranks' gradients) with our SyncBatchNorm."""
    from torch.nn.parallel import DistributedDataParallel

    model = convert_sync_batchnorm(_small_net())
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.5)
    for per_rank in _ddp_batches():
        x, target = per_rank[rank]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), target).backward()
        optimizer.step()
    return [t.detach().clone() for t in model.state_dict().values()]


def _torch_reference(case: dict) -> dict:
    """One process, torch's BatchNorm on the concatenated batches."""
    shape = case["data"][0][0][0].shape
    layer_class = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}.get(
        len(shape), torch.nn.BatchNorm3d
    )
    layer = layer_class(shape[1], dtype=case["dtype"], **case["kwargs"])
    with torch.no_grad():
        if layer.weight is not None:
            layer.weight.copy_(case["weight"])
        if layer.bias is not None:
            layer.bias.copy_(case["bias"])
    steps = []
    for per_rank in case["data"]:
        x = torch.cat([x for x, _ in per_rank]).requires_grad_(True)
        g = torch.cat([g for _, g in per_rank])
        layer.zero_grad()
        y = layer(x)
        y.backward(g)
        whole = torch.cat([x for x, _ in per_rank]).double().transpose(0, 1).flatten(1)
        steps.append(
            {
                "y": y.detach(),
                "dx": x.grad,
                "param_grads": [p.grad for p in layer.parameters()],
                "buffers": [b.clone() for b in layer.buffers()],
                "batch_mean": whole.mean(dim=1),
                "batch_var": whole.var(dim=1, correction=0),
            }
        )
    layer.eval()
    return {"steps": steps, "eval": layer(case["data"][0][0][0]).detach()}


@pytest.fixture(scope="module")
def two_rank_results() -> list[dict]:
    return run_ranks(_train_ranks, world_size=2, args=(CASES,), timeout=120)


@pytest.mark.distributed
@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_match_one_process_on_the_concatenated_batch(two_rank_results, name):
    case = CASES[name]
    tol = TOLERANCE[case["dtype"]]
    reference = _torch_reference(case)
    sizes = [x.shape[0] for x, _ in case["data"][0]]
    for step, expected in enumerate(reference["steps"]):
        for rank, results in enumerate(two_rank_results):
            got = results[name]["steps"][step]
            rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
            where = f"{name}, step {step}, rank {rank}"
            torch.testing.assert_close(got["y"], expected["y"][rows], atol=tol, rtol=tol, msg=where)
            torch.testing.assert_close(
                got["dx"], expected["dx"][rows], atol=tol, rtol=tol, msg=where
            )
            for g, e in zip(got["param_grads"], expected["param_grads"], strict=True):
                torch.testing.assert_close(g, e, atol=tol, rtol=tol, msg=where)
            for b, e in zip(got["buffers"], expected["buffers"], strict=True):
                torch.testing.assert_close(b, e, atol=tol, rtol=tol, msg=where)
            torch.testing.assert_close(
                got["batch_mean"].double(), expected["batch_mean"], atol=1e-6, rtol=1e-6
            )
            torch.testing.assert_close(
                got["batch_var"].double(), expected["batch_var"], atol=1e-6, rtol=1e-6
            )
    eval_out = two_rank_results[0][name]["eval"]
    torch.testing.assert_close(eval_out, reference["eval"], atol=tol, rtol=tol)


@pytest.mark.distributed
def test_channels_last_input_gives_channels_last_output_and_gradient(two_rank_results):
    step = two_rank_results[0]["float32 channels_last"]["steps"][0]
    assert step["y"].is_contiguous(memory_format=torch.channels_last)
    assert step["dx"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.distributed
def test_ddp_training_matches_one_process_on_the_concatenated_batches(two_rank_results):
    """The loss DDP optimises is the mean over ranks of each rank's mean loss."""
    model = _small_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for per_rank in _ddp_batches():
        output = model(torch.cat([x for x, _ in per_rank]))
        sizes = [len(t) for _, t in per_rank]
        losses = [
            torch.nn.functional.cross_entropy(part, target)
            for part, (_, target) in zip(output.split(sizes), per_rank)
        ]
        optimizer.zero_grad()
        (sum(losses) / len(losses)).backward()
        optimizer.step()
    expected = list(model.state_dict().values())
    for results in two_rank_results:
        for got, want in zip(results["ddp"], expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------- bad input on two ranks


def _misbehaving_ranks(rank: int, world_size: int) -> dict:
    """Channel mismatch first (raises on every rank, group stays usable); then rank 1 skips a
    layer on a subgroup with a 1 s timeout, and a layer with timeout=1.0 on the world group
    after one step they ran together."""
    out = {}
    layer = SyncBatchNorm(3 if rank == 0 else 4)
    layer.layer_name = "features.1"
    try:
        layer(torch.randn(4, layer.num_features, 2, 2))
    except ValueError as err:
        out["mismatch"] = str(err)
    subgroup = dist.new_group([0, 1], timeout=datetime.timedelta(seconds=1))
    on_subgroup = SyncBatchNorm(2, process_group=subgroup)
    on_subgroup.layer_name = "blocks.0.bn"
    head = SyncBatchNorm(2, timeout=1.0)
    head.layer_name = "head.bn"
    head(torch.randn(4, 2))  # one good step together: channel counts are checked
    if rank == 0:
        for key, skipped_layer in (("group_timeout", on_subgroup), ("skipped", head)):
            start = time.monotonic()
            try:
                skipped_layer(torch.randn(4, 2))
            except RuntimeError as err:
                out[key] = str(err)
            out[key + "_waited"] = time.monotonic() - start
    else:  # skips both layers; stays alive past rank 0's timeouts
        time.sleep(3.5)
    return out


@pytest.fixture(scope="module")
def misbehaving_results() -> list[dict]:
    return run_ranks(_misbehaving_ranks, world_size=2, timeout=90)


@pytest.mark.distributed
def test_channel_mismatch_raises_on_every_rank_naming_layer_and_counts(misbehaving_results):
    for rank in (0, 1):
        message = misbehaving_results[rank]["mismatch"]
        assert "features.1" in message
        assert "rank 0: num_features=3, input channels=3" in message
        assert "rank 1: num_features=4, input channels=4" in message


@pytest.mark.distributed
def test_a_rank_that_skips_the_layer_times_out_with_the_layer_named(misbehaving_results):
    message = misbehaving_results[0]["skipped"]
    assert "head.bn" in message and "rank 0 of 2" in message
    assert "the forward all_gather of batch moments did not complete" in message
    assert "pass timeout=seconds" in message
    assert misbehaving_results[0]["skipped_waited"] < 2.4  # the 1 s timeout, not the peer


@pytest.mark.distributed
def test_the_process_groups_own_timeout_also_names_the_layer(misbehaving_results):
    message = misbehaving_results[0]["group_timeout"]
    assert message.startswith("blocks.0.bn (rank 0 of 2): the all_gather of channel counts")
    assert "Timed out" in message  # gloo's own words, kept after ours
    assert misbehaving_results[0]["group_timeout_waited"] < 2.4


# ---------------------------------------------------------------- GPU (NCCL), two devices


def _cuda_ranks(rank: int, world_size: int, case: dict) -> dict:
    torch.cuda.set_device(rank)
    x, g = (t.cuda() for t in case["data"][0][rank])
    layer = SyncBatchNorm(x.shape[1], dtype=x.dtype, device="cuda")
    x.requires_grad_(True)
    y = layer(x)
    y.backward(g)
    return {"y": y.detach().cpu(), "dx": x.grad.cpu(), "running_var": layer.running_var.cpu()}


@pytest.mark.gpu
@pytest.mark.distributed
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices for NCCL")
def test_nccl_on_two_gpus_matches_one_process():
    case = _make_case(((3, 4, 5, 5), (6, 4, 5, 5)), torch.float32, steps=1)
    results = run_ranks(_cuda_ranks, world_size=2, args=(case,), backend="nccl", timeout=120)
    reference = _torch_reference(case)["steps"][0]
    torch.testing.assert_close(
        torch.cat([r["y"] for r in results]), reference["y"], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        torch.cat([r["dx"] for r in results]), reference["dx"], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(results[0]["running_var"], reference["buffers"][1])


# ---------------------------------------------------------------- the merge, one process


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 6), min_size=1, max_size=5).filter(lambda s: sum(s) > 0),
    channels=st.integers(1, 4),
    spatial=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_merged_moments_equal_float64_numpy_on_the_whole(sizes, channels, spatial, seed):
    rng = np.random.default_rng(seed)
    whole = rng.normal(3.0, 2.0, size=(sum(sizes), channels, spatial))
    parts = np.split(whole, np.cumsum(sizes)[:-1])
    gathered = torch.stack([local_moments(torch.from_numpy(p)) for p in parts])
    total, mean, var = merge_moments(gathered)
    per_channel = whole.transpose(1, 0, 2).reshape(channels, -1)
    assert total.item() == per_channel.shape[1]
    np.testing.assert_allclose(mean.numpy(), per_channel.mean(axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var.numpy(), per_channel.var(axis=1), rtol=1e-11, atol=1e-12)


def test_an_empty_batch_contributes_zero_moments():
    moments = local_moments(torch.empty(0, 3, 4))
    assert moments.shape == (7,) and moments.dtype == torch.float64
    assert torch.equal(moments, torch.zeros(7, dtype=torch.float64))


# ---------------------------------------------------------------- the module, one process


def test_arguments_and_defaults_match_torch_sync_batchnorm():
    ours = inspect.signature(SyncBatchNorm.__init__).parameters
    theirs = inspect.signature(torch.nn.SyncBatchNorm.__init__).parameters
    for name, parameter in theirs.items():
        assert name in ours, name
        assert ours[name].default == parameter.default, name
        assert ours[name].kind == parameter.kind, name
    assert list(ours)[: len(theirs)] == list(theirs)


@pytest.mark.parametrize("kwargs", [{}, {"affine": False}, {"track_running_stats": False}])
def test_state_dict_loads_both_ways_with_torch_sync_batchnorm(kwargs):
    theirs = torch.nn.SyncBatchNorm(5, **kwargs)
    with torch.no_grad():
        for tensor in theirs.state_dict().values():
            tensor.copy_(torch.randint_like(tensor, 1, 9))
    ours = SyncBatchNorm(5, **kwargs)
    ours.load_state_dict(theirs.state_dict())  # strict
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    back = torch.nn.SyncBatchNorm(5, **kwargs)
    back.load_state_dict(ours.state_dict())


def _train_and_compare(layer: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """Three training steps and one eval step against torch's BatchNorm, one process."""
    reference = (
        torch.nn.BatchNorm2d(shape[1]) if len(shape) == 4 else torch.nn.BatchNorm1d(shape[1])
    )
    for step in range(3):
        x = torch.randn(shape) * (step + 1) + step
        x_ref = x.clone().requires_grad_(True)
        x.requires_grad_(True)
        layer(x).square().sum().backward()
        reference(x_ref).square().sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(layer.running_mean, reference.running_mean)
    torch.testing.assert_close(layer.running_var, reference.running_var)
    assert layer.num_batches_tracked.item() == reference.num_batches_tracked.item() == 3
    layer.eval()
    reference.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(layer(x), reference(x), atol=1e-6, rtol=1e-5)


def test_without_a_process_group_it_is_plain_batchnorm():
    assert not dist.is_initialized()
    _train_and_compare(SyncBatchNorm(3), (6, 3, 4, 4))


def test_in_a_group_of_one_it_is_plain_batchnorm(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        _train_and_compare(SyncBatchNorm(4), (5, 4))
    finally:
        dist.destroy_process_group()


def test_one_value_per_channel_without_a_group_raises_like_batchnorm1d():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        SyncBatchNorm(3)(torch.randn(1, 3))


def test_bad_input_names_the_layer_expected_and_got():
    layer = SyncBatchNorm(3)
    layer.layer_name = "stem.bn"
    with pytest.raises(ValueError, match=r"stem\.bn.*at least 2 dims.*1-D"):
        layer(torch.randn(3))
    with pytest.raises(ValueError, match=r"stem\.bn: expected 3 channels.*got 5"):
        layer(torch.randn(4, 5, 2))
    with pytest.raises(ValueError, match=r"stem\.bn.*floating point"):
        layer(torch.ones(4, 3, dtype=torch.long))


# ---------------------------------------------------------------- convert_sync_batchnorm


def _model() -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 6), vs.nn.BatchNorm1d(6)),
        torch.nn.SyncBatchNorm(6, momentum=None, affine=False),
        torch.nn.InstanceNorm1d(6),
        vs.nn.BatchRenorm1d(6),
    )


def test_convert_replaces_torch_and_vitalstats_batchnorms_sharing_their_tensors():
    model = _model()
    model.eval()
    before = {k: v for k, v in model.state_dict().items()}
    originals = {name: m for name, m in model.named_modules()}
    converted = convert_sync_batchnorm(model, timeout=5.0)
    assert converted is model
    kinds = {name: type(m) for name, m in converted.named_modules()}
    assert kinds["1"] is kinds["2.2"] is kinds["3"] is SyncBatchNorm
    assert kinds["0"] is torch.nn.Conv2d and kinds["4"] is torch.nn.InstanceNorm1d
    assert kinds["5"] is vs.nn.BatchRenorm1d  # a forward of its own: not plain BatchNorm
    assert converted[1].weight is originals["1"].weight
    assert converted[1].running_mean is originals["1"].running_mean
    assert converted[2][2].bias is originals["2.2"].bias
    assert converted[3].momentum is None and not converted[3].affine
    assert [converted[1].layer_name, converted[2][2].layer_name] == ["1", "2.2"]
    assert converted[1].timeout == 5.0 and not converted[1].training
    after = converted.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_converting_a_bare_batchnorm_returns_a_new_sync_layer():
    bn = torch.nn.BatchNorm3d(2, eps=1e-3, bias=False)
    sync = vs.nn.convert_sync_batchnorm(bn)
    assert isinstance(sync, SyncBatchNorm) and isinstance(sync, _BatchNorm)
    assert sync.eps == 1e-3 and sync.bias is None and sync.weight is bn.weight


def test_convert_refuses_an_uninitialised_lazy_batchnorm():
    with pytest.raises(ValueError, match=r"lazy BatchNorm.*run one forward pass"):
        convert_sync_batchnorm(torch.nn.Sequential(torch.nn.LazyBatchNorm2d()))
