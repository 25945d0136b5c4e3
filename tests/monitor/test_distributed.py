"""Two gloo ranks: statistics merged exactly across ranks, only rank 0 writes the store."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import vitalstats as vs
from tests.helpers.distributed import run_ranks
from tests.monitor.helpers import everything

pytestmark = pytest.mark.distributed


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)
    )


def _data(rank: int, steps: int, shift: float = 0.0):
    generator = torch.Generator().manual_seed(100 + rank)
    return [
        (
            torch.randn(12 + 4 * rank, 8, generator=generator) + shift * rank,
            torch.randint(0, 4, (12 + 4 * rank,), generator=generator),
        )
        for _ in range(steps)
    ]


def merge_worker(rank: int, world_size: int, store_path: str):
    torch.set_num_threads(1)
    model = _model()
    initial_weight = model[0].weight.detach().clone()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    monitor = vs.Monitor(ddp, optimizer=opt, store=store_path, config=everything(flush_every=2))
    writes = monitor.store_path is not None
    data = _data(rank, 2)
    for x, y in data:
        loss = nn.functional.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss=loss)
    metrics = {}
    for m in monitor.history:
        if m.step == 0:
            metrics.update(m.scalars)
    report = vs.report.write_report(monitor, store_path + ".html")  # a collective: all ranks
    monitor.close()
    return {
        "writes": writes,
        "report": None if report is None else str(report),
        "metrics": metrics,
        "x0": data[0][0],
        "weight": initial_weight,
        "loss": float(loss),
        "grad_norm_local": float(model[0].weight.grad.norm()),
    }


def worker(rank: int, world_size: int, store_path: str):
    """One spawn for every scenario (starting processes dominates the cost)."""
    return {
        "merge": merge_worker(rank, world_size, store_path),
        "divergence": {flag: divergence_worker(rank, world_size, flag) for flag in (False, True)},
    }


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dist") / "dist.sqlite")
    return path, run_ranks(worker, world_size=2, args=(path,), timeout=240)


def test_statistics_are_merged_exactly_and_only_rank_zero_writes(ranks):
    path, both = ranks
    results = [r["merge"] for r in both]
    assert [r["writes"] for r in results] == [True, False]
    assert results[0]["report"] == path + ".html" and results[1]["report"] is None
    assert "<html" in Path(path + ".html").read_text().lower()
    h = torch.cat([r["x0"] for r in results]).double() @ results[0]["weight"].double().T
    for r in results:  # every rank ends with the pooled statistics
        m = r["metrics"]
        assert m[("0", "act_mean")] == pytest.approx(h.mean().item(), abs=1e-6)
        assert m[("0", "act_std")] == pytest.approx(h.std(correction=0).item(), rel=1e-5)
        assert m[("0", "act_min")] == pytest.approx(h.min().item(), abs=1e-6)
        assert m[("0", "act_max")] == pytest.approx(h.max().item(), abs=1e-6)
    # DDP averaged the gradients: the replicated statistics agree across ranks
    assert results[0]["metrics"][("0.weight", "grad_norm")] == pytest.approx(
        results[1]["metrics"][("0.weight", "grad_norm")]
    )
    with vs.RunStore(path) as store:
        assert len(store.runs()) == 1
        steps, values = store.series(store.runs()[0].run_id, "0", "act_std")
        assert steps.tolist() == [0, 1]
        np.testing.assert_allclose(values[0], h.std(correction=0).item(), rtol=1e-5)


def divergence_worker(rank: int, world_size: int, broadcast_buffers: bool):
    torch.set_num_threads(1)
    model = _model()
    with warnings.catch_warnings():  # torch 2.13 deprecates the flag; False still means local
        warnings.simplefilter("ignore", FutureWarning)
        ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=broadcast_buffers)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    monitor = vs.Monitor(ddp, optimizer=opt, config=vs.monitor.MonitorConfig(flush_every=4))
    for x, y in _data(rank, 4, shift=4.0):
        loss = nn.functional.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss=loss)
    found = sorted({f.code for f in monitor.diagnose()})
    monitor.close()
    return found


@pytest.mark.parametrize("broadcast_buffers", [False, True])
def test_batchnorm_buffers_diverging_across_ranks(ranks, broadcast_buffers):
    for result in ranks[1]:
        found = result["divergence"][broadcast_buffers]
        assert ("BN_BUFFER_DIVERGENCE" in found) is (not broadcast_buffers)
