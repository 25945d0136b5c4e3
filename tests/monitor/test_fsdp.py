"""FSDP2 (fully_shard) on two gloo ranks: every per-parameter metric equals the unsharded
model's in one process on the concatenated batch; activations pool; rank 0 writes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import vitalstats as vs
from tests.helpers.distributed import run_ranks
from tests.monitor.helpers import everything

pytestmark = pytest.mark.distributed

STEPS = 3
PARAMETER_METRICS = (
    "grad_norm", "grad_std", "grad_max_abs", "weight_std", "grad_to_data",
    "update_to_data_log10", "adam_m_hat_abs_mean", "adam_sqrt_v_hat_mean", "adam_step_rms",
)  # fmt: skip


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    # 7 and 5 output features: shards of unequal size, and a 1-element parameter's shard is
    # empty on one rank
    return nn.Sequential(
        nn.Linear(6, 7), nn.ReLU(), nn.LayerNorm(7), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 1)
    )


def _batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(10 + rank)
    return [
        (torch.randn(8, 6, generator=generator), torch.randn(8, 1, generator=generator))
        for _ in range(STEPS)
    ]


def _train(model: nn.Module, data, monitor: vs.Monitor, opt) -> None:
    for x, y in data:
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss=loss)


def _metrics(monitor: vs.Monitor) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for m in monitor.flush():
        out.setdefault(m.step, {}).update(m.scalars)
    return out


def sharded_worker(rank: int, world_size: int, store_path: str):
    from torch.distributed.fsdp import fully_shard

    model = _model()
    for layer in model:
        if isinstance(layer, nn.Linear | nn.LayerNorm):
            fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    monitor = vs.Monitor(model, optimizer=opt, store=store_path, config=everything(flush_every=100))
    writes = monitor.store_path is not None
    _train(model, _batches(rank), monitor, opt)
    metrics = _metrics(monitor)
    found = sorted({f.code for f in monitor.diagnose()})
    monitor.close()
    names = sorted(name for name, _ in model.named_parameters())
    return {"metrics": metrics, "writes": writes, "names": names, "findings": found}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fsdp") / "fsdp.sqlite")
    ranks = run_ranks(sharded_worker, world_size=2, args=(path,), timeout=300)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    monitor = vs.Monitor(model, optimizer=opt, config=everything(flush_every=100))
    pooled = [
        (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(_batches(0), _batches(1))
    ]
    _train(model, pooled, monitor, opt)
    reference = _metrics(monitor)
    monitor.close()
    return path, ranks, reference, sorted(name for name, _ in model.named_parameters())


def test_parameter_names_are_the_users(results):
    _, ranks, _, names = results
    assert all(r["names"] == names for r in ranks)


def test_every_parameter_metric_matches_the_unsharded_model(results):
    _, ranks, reference, names = results
    for step in range(STEPS):
        want = reference[step]
        for rank in ranks:
            got = rank["metrics"][step]
            measured = {k for k in want if k[0] in names}
            assert {k for k in got if k[0] in names} == measured
            for name, metric in sorted(measured):
                if metric in PARAMETER_METRICS:
                    expected = want[(name, metric)]
                    tolerance = 1e-4 if metric == "update_to_data_log10" else 1e-4 * abs(expected)
                    assert got[(name, metric)] == pytest.approx(expected, abs=tolerance + 1e-9), (
                        step, name, metric,
                    )  # fmt: skip
            assert got[("", "grad_norm_total")] == pytest.approx(
                want[("", "grad_norm_total")], rel=1e-5
            )


def test_activations_pool_both_ranks_batches(results):
    _, ranks, reference, _ = results
    for step in range(STEPS):
        for rank in ranks:
            for layer in ("0", "2", "4"):
                for metric in ("act_mean", "act_std", "act_min", "act_max"):
                    assert rank["metrics"][step][(layer, metric)] == pytest.approx(
                        reference[step][(layer, metric)], rel=1e-5, abs=1e-6
                    )
            assert rank["metrics"][step][("", "loss")] == pytest.approx(
                reference[step][("", "loss")], rel=1e-6
            )


def test_rank_zero_writes_the_store(results):
    path, ranks, reference, _ = results
    assert [r["writes"] for r in ranks] == [True, False]
    with vs.RunStore(Path(path)) as store:
        [run] = store.runs()
        steps, values = store.series(run.run_id, "3.weight", "grad_norm")
        assert steps.tolist() == list(range(STEPS))
        assert values[0] == pytest.approx(reference[0][("3.weight", "grad_norm")], rel=1e-4)
    assert ranks[0]["findings"] == ranks[1]["findings"]  # the same story on every rank


def test_fsdp1_gets_one_clear_error_naming_fsdp2():
    """FSDP1 needs an accelerator to be built, so the wrapper is made without its __init__:
    what is tested is the monitor's detection and message."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    wrapper = FullyShardedDataParallel.__new__(FullyShardedDataParallel)
    nn.Module.__init__(wrapper)
    model = nn.Sequential(nn.Linear(2, 2))
    model.add_module("sharded", wrapper)
    with pytest.raises(TypeError, match=r"FSDP1.*fully_shard"):
        vs.Monitor(model)


def test_the_reference_metrics_are_finite(results):
    _, _, reference, _ = results
    assert all(math.isfinite(v) for v in reference[STEPS - 1].values() if v != -math.inf)
