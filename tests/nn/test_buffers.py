"""check_buffer_divergence and sync_buffers on two gloo ranks with hand-set running statistics."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

import vitalstats as vs
from tests.helpers.distributed import run_ranks
from vitalstats.nn.buffers import check_buffer_divergence, layers_with_running_stats, sync_buffers


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3),
        torch.nn.BatchNorm2d(2, eps=0.0),  # torch's
        torch.nn.Flatten(),
        torch.nn.Linear(2, 3),
        vs.nn.BatchNorm1d(3, eps=0.0),  # ours
        torch.nn.InstanceNorm1d(3, track_running_stats=True, eps=0.0),
        torch.nn.InstanceNorm1d(3),  # no running statistics: not a layer to compare
    )


# Per rank: (running_mean, running_var, num_batches_tracked) of layers "1", "4", "5".
# Layer 1: means differ by 0.3 where var = 1 on both ranks            -> divergence 0.3
# Layer 4: var 1 on rank 0 and 4 on rank 1, same means                 -> divergence log 4
# Layer 5: identical, a dead channel (var 0, eps 0) included          -> divergence 0
RANK_BUFFERS = [
    {
        "1": ([0.0, 2.0], [1.0, 9.0], 5),
        "4": ([1.0, 1.0, 1.0], [1.0, 2.0, 2.0], 5),
        "5": ([0.5, 0.5, 0.5], [0.0, 3.0, 3.0], 5),
    },
    {
        "1": ([0.3, 2.0], [1.0, 9.0], 7),
        "4": ([1.0, 1.0, 1.0], [4.0, 2.0, 2.0], 7),
        "5": ([0.5, 0.5, 0.5], [0.0, 3.0, 3.0], 7),
    },
]


def _set_buffers(model: torch.nn.Module, buffers: dict) -> None:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, (mean, var, count) in buffers.items():
            modules[name].running_mean.copy_(torch.tensor(mean))
            modules[name].running_var.copy_(torch.tensor(var))
            modules[name].num_batches_tracked.fill_(count)


def _buffers(model: torch.nn.Module) -> dict:
    return {
        name: (m.running_mean.tolist(), m.running_var.tolist(), m.num_batches_tracked.item())
        for name, m in layers_with_running_stats(model)
    }


def _ddp_drift(rank: int, sync_batchnorm: bool) -> float:
    """Three DDP steps without buffer broadcast, each rank's data shifted by its rank; returns
    the largest divergence of the one BatchNorm layer."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    if sync_batchnorm:
        model = vs.nn.convert_sync_batchnorm(model)
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    no_broadcast = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in parameters
        else {"broadcast_buffers": False}
    )
    ddp = DistributedDataParallel(model, **no_broadcast)
    generator = torch.Generator().manual_seed(rank)
    for _ in range(3):
        ddp(torch.randn(8, 3, generator=generator) + 2.0 * rank).sum().backward()
    return check_buffer_divergence(model)["1"]


def _divergence_then_sync(rank: int, world_size: int) -> dict:
    model = _model()
    _set_buffers(model, RANK_BUFFERS[rank])
    before = check_buffer_divergence(model)
    sync_buffers(model)
    after = check_buffer_divergence(model)
    mismatch = None
    other = _model() if rank == 0 else torch.nn.Sequential(_model(), torch.nn.BatchNorm1d(4))
    try:
        check_buffer_divergence(other)
    except ValueError as err:
        mismatch = str(err)
    # a rank whose model has no BatchNorm at all must still take part, not leave rank 0 waiting
    lopsided = _model() if rank == 0 else torch.nn.Sequential(torch.nn.Linear(2, 2))
    no_layers_mismatch = None
    try:
        sync_buffers(lopsided)
    except ValueError as err:
        no_layers_mismatch = str(err)
    none_anywhere = check_buffer_divergence(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    drift = {"local": _ddp_drift(rank, False), "sync": _ddp_drift(rank, True)}
    return {
        "before": before,
        "after": after,
        "buffers": _buffers(model),
        "mismatch": mismatch,
        "no_layers_mismatch": no_layers_mismatch,
        "none_anywhere": none_anywhere,
        "drift": drift,
    }


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    return run_ranks(_divergence_then_sync, world_size=2, timeout=90)


@pytest.mark.distributed
def test_divergence_is_the_largest_spread_in_std_units_or_log_variance_ratio(two_ranks):
    expected = {"1": 0.3, "4": math.log(4.0), "5": 0.0}
    for result in two_ranks:  # every rank gets the same answer
        assert result["before"].keys() == expected.keys()
        for name, value in expected.items():
            assert result["before"][name] == pytest.approx(value, rel=1e-6, abs=1e-12), name


@pytest.mark.distributed
def test_sync_buffers_averages_statistics_and_takes_the_largest_count(two_ranks):
    for result in two_ranks:
        for name, (mean, var, count) in result["buffers"].items():
            zero, one = RANK_BUFFERS[0][name], RANK_BUFFERS[1][name]
            assert mean == pytest.approx([(a + b) / 2 for a, b in zip(zero[0], one[0])])
            assert var == pytest.approx([(a + b) / 2 for a, b in zip(zero[1], one[1])])
            assert count == 7
        assert result["after"] == {"1": 0.0, "4": 0.0, "5": 0.0}


@pytest.mark.distributed
def test_different_models_on_the_ranks_raise_with_each_ranks_layout(two_ranks):
    for result in two_ranks:
        assert "rank 0: 3 layers with 8 channels" in result["mismatch"]
        assert "rank 1: 4 layers with 12 channels" in result["mismatch"]


@pytest.mark.distributed
def test_a_rank_without_running_statistics_raises_instead_of_leaving_peers_waiting(two_ranks):
    for result in two_ranks:
        assert "sync_buffers: the ranks hold different models" in result["no_layers_mismatch"]
        assert "rank 0: 3 layers with 8 channels" in result["no_layers_mismatch"]
        assert "rank 1: 0 layers with 0 channels" in result["no_layers_mismatch"]
        assert result["none_anywhere"] == {}


@pytest.mark.distributed
def test_ddp_without_buffer_broadcast_drifts_and_syncbatchnorm_does_not(two_ranks):
    for result in two_ranks:
        assert result["drift"]["local"] > 0.1  # rank 1's inputs are shifted by 2 std
        assert result["drift"]["sync"] == 0.0


def test_without_a_process_group_there_is_no_divergence_and_sync_changes_nothing():
    model = _model()
    _set_buffers(model, RANK_BUFFERS[1])
    before = _buffers(model)
    assert check_buffer_divergence(model) == {"1": 0.0, "4": 0.0, "5": 0.0}
    sync_buffers(model)
    assert _buffers(model) == before


def test_a_model_without_running_statistics_has_no_layers():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    assert layers_with_running_stats(model) == []
    assert check_buffer_divergence(model) == {}


def test_exported_from_vs_nn():
    assert vs.nn.check_buffer_divergence is check_buffer_divergence
    assert vs.nn.sync_buffers is sync_buffers
