"""vs.nn.recompute_bn_stats (PreciseBN): exact population statistics, independent of batching,
standardised eval outputs, restored modes, and an exact merge across torch.distributed ranks."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import vitalstats as vs
from tests.helpers.distributed import run_ranks


def _data(batches: int = 6, batch_size: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch_size, 5, generator=g) * 4 + 3 for _ in range(batches)]


def _model(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6),  # torch's layer
        torch.nn.ReLU(), torch.nn.Linear(6, 4), vs.nn.BatchNorm1d(4),  # ours
    )  # fmt: skip


def test_first_layer_gets_the_float64_population_statistics_of_its_input() -> None:
    model, data = _model(), _data()
    vs.nn.recompute_bn_stats(model, data, num_batches=4)
    with torch.no_grad():
        inputs = model[0](torch.cat(data[:4])).double()  # only the first 4 batches count
    torch.testing.assert_close(model[1].running_mean.double(), inputs.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        model[1].running_var.double(), inputs.var(0, unbiased=False), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("inputs_from", ["train", "eval"])
def test_result_does_not_depend_on_the_batch_size(inputs_from: str) -> None:
    """fvcore's test: the same 64 samples as batches of 2, 4, ..., 64 give the same statistics
    (for "eval"; in "train" mode upstream BatchNorms use batch statistics, so only the first
    BatchNorm's input is batch-size independent)."""
    samples = torch.cat(_data(batches=4))  # 64 samples
    results = []
    for batch_size in (2, 4, 8, 16, 32, 64):
        model = _model()
        vs.nn.recompute_bn_stats(model, list(samples.split(batch_size)), num_batches=1000,
                                 inputs_from=inputs_from)  # fmt: skip
        layers = (model[1], model[4]) if inputs_from == "eval" else (model[1],)
        results.append(torch.cat([torch.cat([bn.running_mean, bn.running_var]) for bn in layers]))
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], rtol=1e-5, atol=1e-5)


def test_eval_mode_outputs_on_the_same_data_are_standardised() -> None:
    """Acceptance test from the issue: per-channel mean 0 and var 1 within 1e-5."""
    model, data = _model(), _data()
    with torch.no_grad():  # make BatchNorm inputs' variance >> eps so var / (var + eps) ~ 1
        model[3].weight.mul_(30)
    vs.nn.recompute_bn_stats(model, data, inputs_from="eval")
    model.eval()
    outputs: dict[int, list[torch.Tensor]] = {1: [], 4: []}
    hooks = [
        model[i].register_forward_hook(lambda m, a, y, i=i: outputs[i].append(y)) for i in outputs
    ]
    with torch.no_grad():
        for x in data:
            model(x)
    for hook in hooks:
        hook.remove()
    for index, ys in outputs.items():
        y = torch.cat(ys).double()
        bn = model[index]
        y = (y - bn.bias.double()) / bn.weight.double()  # undo the affine part
        torch.testing.assert_close(
            y.mean(0), torch.zeros(y.shape[1], dtype=torch.float64), rtol=0, atol=1e-5
        )
        torch.testing.assert_close(
            y.var(0, unbiased=False), torch.ones(y.shape[1], dtype=torch.float64), rtol=0, atol=1e-5
        )


def test_modes_counts_and_weights_are_restored() -> None:
    model = _model()
    model.train()
    model[4].eval()  # mixed modes survive
    model[1].num_batches_tracked.fill_(11)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    vs.nn.recompute_bn_stats(model, _data(), inputs_from="train")
    assert model.training and model[1].training and not model[4].training
    for key, value in model.state_dict().items():
        if "running" not in key:
            assert torch.equal(value, weights[key]), key


def test_tuple_batches_and_custom_forward() -> None:
    data = [(x, torch.zeros(len(x))) for x in _data()]
    a, b = _model(), _model()
    vs.nn.recompute_bn_stats(a, data)
    vs.nn.recompute_bn_stats(b, [x for x, _ in data], forward=lambda model, batch: model(batch))
    torch.testing.assert_close(a[4].running_var, b[4].running_var)


class _SkipsItsNorm(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear, self.unused = torch.nn.Linear(5, 3), vs.nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_a_layer_the_data_never_reaches_is_an_error() -> None:
    model = _SkipsItsNorm()
    with pytest.raises(RuntimeError, match=r"BatchNorm1d\(3\) was never called"):
        vs.nn.recompute_bn_stats(model, _data())


def _distributed_worker(rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    model, data = _model(), _data(batches=8)
    shard = data[rank::world_size]  # each rank sees different batches
    vs.nn.recompute_bn_stats(model, shard, inputs_from="eval")
    return model[4].running_mean.clone(), model[4].running_var.clone()


@pytest.mark.distributed
def test_statistics_merge_exactly_across_ranks() -> None:
    results = run_ranks(_distributed_worker, world_size=2, timeout=120)
    model = _model()
    vs.nn.recompute_bn_stats(model, _data(batches=8), inputs_from="eval")  # all data, one process
    for running_mean, running_var in results:
        torch.testing.assert_close(running_mean, model[4].running_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(running_var, model[4].running_var, rtol=1e-6, atol=1e-6)


def _sync_worker(rank: int, world_size: int, batches_per_rank: tuple[int, ...]) -> Any:
    """SyncBatchNorm runs collectives in its training forward: ranks with different numbers
    of batches must still finish (in lockstep, on the batches every rank has)."""
    model = vs.nn.convert_sync_batchnorm(_model())
    data = _data(batches=sum(batches_per_rank))
    start = sum(batches_per_rank[:rank])
    shard = data[start : start + batches_per_rank[rank]]
    try:
        vs.nn.recompute_bn_stats(model, shard, inputs_from="train")
    except ValueError as error:
        return str(error)
    return model[1].running_mean.clone(), model[1].running_var.clone()


@pytest.mark.distributed
def test_sync_batchnorm_ranks_with_unequal_batch_counts_stay_in_lockstep() -> None:
    first, second = run_ranks(_sync_worker, world_size=2, args=((2, 3),), timeout=120)
    data = _data(batches=5)
    used = torch.cat([data[0], data[1], data[2], data[3]])  # rank 1's third batch is dropped
    reference = _model()
    vs.nn.recompute_bn_stats(reference, [used], inputs_from="train")
    for running_mean, running_var in (first, second):
        torch.testing.assert_close(running_mean, reference[1].running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(running_var, reference[1].running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.distributed
def test_a_rank_without_data_is_the_same_error_on_every_rank() -> None:
    results = run_ranks(_sync_worker, world_size=2, args=((2, 0),), timeout=120)
    assert all("no batches on at least one rank" in message for message in results)
