"""torch.compile: with the monitor attached the model compiles with fullgraph=True, trains,
and gives the eager statistics; vitalstats causes no graph break."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

import vitalstats as vs
from vitalstats.monitor import MonitorConfig

_SKIP = {"steps_per_second", "out_grad_std"}  # wall time; not measured in a compiled graph


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16, bias=False), nn.BatchNorm1d(16), nn.Tanh(),
        nn.Linear(16, 4),
    )  # fmt: skip


def _run(base: nn.Module, config: MonitorConfig, steps: int, backend: str | None):
    model = copy.deepcopy(base)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = vs.Monitor(model, optimizer=opt, config=config)
    forward = model if backend is None else torch.compile(model, fullgraph=True, backend=backend)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(32, 8, generator=generator)
        y = torch.randint(0, 4, (32,), generator=generator)
        loss = nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss=loss)
    monitor.flush()
    by_step: dict[int, dict] = {}
    for m in monitor.history:
        by_step.setdefault(m.step, {}).update(m.scalars)
    monitor.close()
    return by_step


def _compare(compiled: dict, eager: dict, rel: float) -> int:
    compared = 0
    for step, scalars in eager.items():
        for key, value in scalars.items():
            if key[1] in _SKIP:
                continue
            assert key in compiled[step], (step, key)
            if math.isfinite(value):
                assert compiled[step][key] == pytest.approx(value, rel=rel, abs=1e-6), (step, key)
                compared += 1
    return compared


@pytest.fixture()
def dynamo_counters():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


def test_fullgraph_compiles_with_the_default_schedule_and_matches_eager(dynamo_counters):
    """aot_eager traces the forward and backward graphs (dynamo + AOTAutograd) without a
    C++ build: any graph break or untraceable hook would fail here."""
    config = MonitorConfig(flush_every=20, activations_every=5, norm_layers_every=5,
                           parameters_every=5, updates_every=5, histograms_every=10)  # fmt: skip
    base = _model()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="vs.Monitor: out_grad_std")
        compiled = _run(base, config, 21, backend="aot_eager")
    assert dict(dynamo_counters["graph_break"]) == {}
    assert dynamo_counters["stats"]["unique_graphs"] <= 4  # one per schedule combination
    eager = _run(base, config, 21, backend=None)
    assert _compare(compiled, eager, rel=1e-6) > 200


def test_everything_every_step_compiles_too(dynamo_counters):
    base = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = _run(base, MonitorConfig.everything(flush_every=4), 4, backend="aot_eager")
    assert dict(dynamo_counters["graph_break"]) == {}
    notes = [str(w.message) for w in caught if "vs.Monitor" in str(w.message)]
    assert notes == [
        "vs.Monitor: out_grad_std is not measured in this run: a tensor hook cannot record "
        "inside a compiled graph."
    ]
    eager = _run(base, MonitorConfig.everything(flush_every=4), 4, backend=None)
    assert _compare(compiled, eager, rel=1e-6) > 100


@pytest.mark.slow
def test_inductor_fullgraph_statistics_equal_eager_within_float32_reordering(dynamo_counters):
    base = _model()
    config = MonitorConfig(flush_every=10, activations_every=5, parameters_every=5,
                           updates_every=5, norm_layers_every=5)  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="vs.Monitor: out_grad_std")
        compiled = _run(base, config, 11, backend="inductor")
    assert dict(dynamo_counters["graph_break"]) == {}
    eager = _run(base, config, 11, backend=None)
    assert _compare(compiled, eager, rel=1e-4) > 100


@pytest.mark.slow
def test_compiled_statistics_kernels_give_the_eager_statistics():
    from vitalstats.stats.kernels import compile_status

    ok, reason = compile_status()
    if not ok:
        pytest.skip(f"torch.compile cannot build kernels here: {reason}")
    base = _model()
    eager = _run(base, MonitorConfig.everything(flush_every=4, kernels="eager"), 4, backend=None)
    for mode in ("compiled", "auto"):  # the CPU C kernels (vitalstats.stats.native)
        fused = _run(base, MonitorConfig.everything(flush_every=4, kernels=mode), 4, None)
        assert _compare(fused, eager, rel=1e-4) > 100
