"""vs.Monitor: metrics against float64 oracles, hooks, accumulation, selection, no syncs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import vitalstats as vs
from tests.monitor.helpers import batches, everything, mlp, train
from vitalstats.monitor import MonitorConfig


def _step_metrics(monitor, step):
    merged = {}
    for m in monitor.history:
        if m.step == step:
            merged.update(m.scalars)
    return merged


def test_activation_and_gradient_metrics_match_float64_oracle():
    model = mlp((8, 16, 16, 4), activation=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = vs.Monitor(model, optimizer=opt, config=everything())
    x, y = next(batches(1))
    before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    # Oracle forward in float64 from the same weights, keeping every layer output.
    outputs, h = {}, x.double()
    for name, layer in model.named_children():
        if isinstance(layer, nn.Linear):
            h = h @ layer.weight.detach().double().T + layer.bias.detach().double()
        else:
            h = torch.tanh(h)
        outputs[name] = h
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    grads = {n: p.grad.detach().double().clone() for n, p in model.named_parameters()}
    opt.step()
    monitor.step(loss=loss)
    monitor.flush()
    metrics = _step_metrics(monitor, 0)
    for name, out in outputs.items():
        assert metrics[(name, "act_mean")] == pytest.approx(out.mean().item(), abs=1e-6)
        assert metrics[(name, "act_std")] == pytest.approx(out.std(correction=0).item(), rel=1e-5)
        assert metrics[(name, "act_min")] == pytest.approx(out.min().item(), abs=1e-6)
        assert metrics[(name, "act_max")] == pytest.approx(out.max().item(), abs=1e-6)
        assert metrics[(name, "act_nonfinite_fraction")] == 0.0
    saturated = (outputs["1"].abs() > 0.97).double().mean().item()
    assert metrics[("1", "act_saturated_fraction")] == pytest.approx(saturated, abs=1e-12)
    total = 0.0
    for name, g in grads.items():
        p_before, p_after = before[name], dict(model.named_parameters())[name].detach().double()
        total += g.square().sum().item()
        assert metrics[(name, "grad_norm")] == pytest.approx(g.norm().item(), rel=1e-5)
        assert metrics[(name, "grad_std")] == pytest.approx(g.std(correction=0).item(), rel=1e-4)
        assert metrics[(name, "grad_max_abs")] == pytest.approx(g.abs().max().item(), rel=1e-6)
        w_std = p_before.std(correction=0).item()
        assert metrics[(name, "weight_std")] == pytest.approx(w_std, rel=1e-5)
        assert metrics[(name, "grad_to_data")] == pytest.approx(
            g.std(correction=0).item() / w_std, rel=1e-4
        )
        update_std = (p_after - p_before).std(correction=0).item()
        assert metrics[(name, "update_to_data_log10")] == pytest.approx(
            math.log10(update_std / w_std), abs=1e-4
        )
    assert metrics[("", "grad_norm_total")] == pytest.approx(math.sqrt(total), rel=1e-5)
    assert metrics[("", "loss")] == pytest.approx(loss.item())
    assert metrics[("", "lr")] == 0.1
    monitor.close()


def test_output_gradient_std_matches_autograd():
    model = mlp((8, 16, 4))
    monitor = vs.Monitor(model, config=everything())
    x, y = next(batches(1))
    out0 = model[0](x)
    out0.retain_grad()
    logits = model[2](model[1](out0))
    nn.functional.cross_entropy(logits, y).backward()
    expected = out0.grad.double().std(correction=0).item()
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    monitor.step()
    monitor.flush()
    metrics = _step_metrics(monitor, 0)
    assert metrics[("0", "out_grad_std")] == pytest.approx(expected, rel=1e-5)
    monitor.close()


def test_adam_moment_statistics_match_optimizer_state():
    model = mlp((8, 16, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.9), eps=1e-6)
    monitor = vs.Monitor(model, optimizer=opt, config=everything())
    train(model, opt, monitor, batches(3))
    monitor.flush()
    metrics = _step_metrics(monitor, 2)
    for name, p in model.named_parameters():
        state = opt.state[p]
        t = float(state["step"])
        m = state["exp_avg"].double() / (1 - 0.8**t)
        v = state["exp_avg_sq"].double() / (1 - 0.9**t)
        step = 1e-2 * m / (v.sqrt() + 1e-6)  # lr * m_hat / (sqrt(v_hat) + eps)
        assert metrics[(name, "adam_m_hat_abs_mean")] == pytest.approx(
            m.abs().mean().item(), rel=1e-5
        )
        assert metrics[(name, "adam_sqrt_v_hat_mean")] == pytest.approx(
            v.sqrt().mean().item(), rel=1e-5
        )
        assert metrics[(name, "adam_step_rms")] == pytest.approx(
            step.square().mean().sqrt().item(), rel=1e-4
        )
    monitor.close()


def test_gradient_accumulation_pools_micro_batches_into_one_step():
    model = mlp((8, 16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = vs.Monitor(model, optimizer=opt, config=everything())
    x, y = next(batches(1, batch=16))
    with torch.no_grad():
        full = model[0](x).double()
    opt.zero_grad()
    for part in (slice(0, 8), slice(8, 16)):  # two micro-batches, one optimiser step
        (nn.functional.cross_entropy(model(x[part]), y[part]) / 2).backward()
    grad_norm = model[0].weight.grad.double().norm().item()
    opt.step()
    monitor.step()
    monitor.flush()
    metrics = _step_metrics(monitor, 0)
    assert monitor.step_index == 1
    assert metrics[("0", "act_mean")] == pytest.approx(full.mean().item(), abs=1e-6)
    assert metrics[("0", "act_std")] == pytest.approx(full.std(correction=0).item(), rel=1e-5)
    assert metrics[("0.weight", "grad_norm")] == pytest.approx(grad_norm, rel=1e-6)
    dead = ((torch.relu(full) == 0).all(0)).double().mean().item()
    assert metrics[("1", "act_dead_fraction")] == pytest.approx(dead)
    monitor.close()


def test_batchnorm_drift_matches_manual_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    monitor = vs.Monitor(model, config=everything())
    bn = model[1]
    for _ in range(3):
        x = torch.randn(32, 4) * 2 + 1
        h = model[0](x).detach().double()
        running_mean, running_var = bn.running_mean.double().clone(), bn.running_var.double()
        running_var = running_var.clone()
        model(x).sum().backward()
        monitor.step()
    monitor.flush()
    metrics = _step_metrics(monitor, 2)
    batch_mean, batch_var = h.mean(0), h.var(0, correction=0)
    drift = ((batch_mean - running_mean).abs() / (running_var + bn.eps).sqrt()).mean().item()
    log_ratio = (batch_var / running_var).log().mean().item()
    assert metrics[("1", "bn_mean_drift")] == pytest.approx(drift, rel=1e-5)
    assert metrics[("1", "bn_var_log_ratio")] == pytest.approx(log_ratio, rel=1e-4, abs=1e-6)
    monitor.close()


def test_monitor_does_not_change_training_and_detach_removes_every_hook():
    plain, watched = mlp(), mlp()
    opt_a = torch.optim.Adam(plain.parameters(), lr=1e-2)
    opt_b = torch.optim.Adam(watched.parameters(), lr=1e-2)
    monitor = vs.Monitor(watched, optimizer=opt_b, config=everything(flush_every=3))
    train(plain, opt_a, None, batches(7))
    train(watched, opt_b, monitor, batches(7))
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    monitor.detach()
    assert not monitor.attached
    for module in watched.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert not opt_b._optimizer_step_pre_hooks and not opt_b._optimizer_step_post_hooks
    steps_before = monitor.step_index
    train(watched, opt_b, None, batches(2))
    assert monitor.step_index == steps_before
    monitor.attach()
    assert monitor.attached
    monitor.close()


def test_include_exclude_and_types_select_layers_and_parameters():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.Tanh()))
    monitor = vs.Monitor(model, include="2.*", exclude="2.1")
    assert [name for name, _ in monitor.layers] == ["2.0"]
    assert [name for name, _ in monitor.parameters.named] == ["2.0.weight", "2.0.bias"]
    monitor.close()
    monitor = vs.Monitor(model, types=[nn.ReLU, nn.Tanh])
    assert [name for name, _ in monitor.layers] == ["1", "2.1"]
    monitor.close()
    with pytest.warns(UserWarning, match="no layer matched"):
        vs.Monitor(model, include="nothing*").close()


def test_step_does_no_host_sync(monkeypatch):
    """Between flushes no tensor value may reach Python (the no-sync contract), on any
    device: no host read, no data-dependent branch."""
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    monitor = vs.Monitor(model, optimizer=opt, config=everything(flush_every=1000))

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync in the per-step path")

    for method in ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, method, forbidden)
    with pytest.raises(AssertionError, match="host sync"):
        bool(torch.ones(()))  # the trap works
    train(model, opt, monitor, batches(3))
    monkeypatch.undo()
    assert len(monitor._records) == 3
    monitor.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_steps_do_not_synchronise():
    model = mlp().cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = vs.Monitor(model, optimizer=opt, config=everything(flush_every=1000))
    data = [(x.cuda(), y.cuda()) for x, y in batches(3)]
    train(model, opt, monitor, data[:1])
    torch.cuda.set_sync_debug_mode("error")
    try:
        train(model, opt, monitor, data[1:])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    monitor.close()


def test_a_compiled_model_is_attached_through_its_original_module():
    """Passed compiled but not yet run: the hooks are in the graph when it is built."""
    model = mlp()
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="vs.Monitor")
        config = everything(output_grads_every=0)  # out_grad_std: not inside a compiled graph
        monitor = vs.Monitor(compiled, optimizer=opt, config=config)
        train(compiled, opt, monitor, batches(1))
    assert monitor.inner is model and monitor.compiled
    assert ("0", "act_std") in monitor.flush()[0].scalars
    monitor.close()


def test_a_graph_built_before_attaching_gets_one_precise_warning():
    torch._dynamo.reset()
    model = mlp()
    compiled = torch.compile(model, backend="eager")
    compiled(torch.randn(32, 8))  # the graph (for this shape) exists before the hooks
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = vs.Monitor(compiled, optimizer=opt, config=everything())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(compiled, opt, monitor, batches(3))
    messages = [str(w.message) for w in caught if "torch.compile" in str(w.message)]
    assert len(messages) == 1 and "torch._dynamo.reset()" in messages[0]
    assert ("0.weight", "grad_norm") in monitor.flush()[0].scalars  # the rest still works
    monitor.close()
    torch._dynamo.reset()


def test_evaluating_records_eval_loss_and_skips_measurement():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = vs.Monitor(model, optimizer=opt, config=everything())
    train(model, opt, monitor, batches(2))
    model.eval()
    x, y = next(batches(1, seed=5))
    with monitor.evaluating() as phase, torch.no_grad():
        loss = nn.functional.cross_entropy(model(x), y)
        phase.add_loss(loss)
    model.train()
    assert not monitor.state.acc  # nothing measured inside the phase
    monitor.flush()
    assert _step_metrics(monitor, 1)[("", "eval_loss")] == pytest.approx(loss.item())
    monitor.close()


def test_context_manager_marks_crashed_runs(tmp_path):
    path = tmp_path / "runs.sqlite"
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with (
        pytest.raises(RuntimeError, match="boom"),
        vs.Monitor(model, optimizer=opt, store=path) as monitor,
    ):
        train(model, opt, monitor, batches(2))
        raise RuntimeError("boom")
    with vs.Monitor(model, optimizer=opt, store=path) as monitor:
        train(model, opt, monitor, batches(2))
    store = vs.RunStore(path)
    assert [run.status for run in store.runs()] == ["crashed", "finished"]
    store.close()


def test_bad_arguments_have_clear_errors():
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        vs.Monitor("model")
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        vs.Monitor(mlp(), optimizer="adam")
    with pytest.raises(ValueError, match="activations_every"):
        MonitorConfig(activations_every=-1)


def test_default_schedule():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = vs.Monitor(model, optimizer=opt)
    train(model, opt, monitor, batches(60))
    monitor.flush()
    steps = sorted({m.step for m in monitor.history if ("0", "act_std") in m.scalars})
    assert steps == [0, 50]
    grad_steps = [m.step for m in monitor.history if ("0.weight", "grad_norm") in m.scalars]
    assert grad_steps == [0, 10, 20, 30, 40, 50]  # grad_norm_every=10
    assert np.isfinite([m.scalars[("", "loss")] for m in monitor.history]).all()
    monitor.close()


def test_vitalstats_batchnorm_uses_its_published_batch_statistics():
    """Same drift whether the batch statistics come from ``batch_mean``/``batch_var``
    (vitalstats' BatchNorm) or from the input (torch's BatchNorm)."""
    results = []
    for norm in (nn.BatchNorm1d, vs.nn.BatchNorm1d):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6, bias=False), norm(6))
        monitor = vs.Monitor(model, config=everything())
        for x, _ in batches(3, features=4):
            model(x * 3 + 1).sum().backward()
            monitor.step()
        monitor.flush()
        metrics = _step_metrics(monitor, 2)
        results.append((metrics[("1", "bn_mean_drift")], metrics[("1", "bn_var_log_ratio")]))
        monitor.close()
    assert results[1] == pytest.approx(results[0], rel=1e-5)


def test_output_gradient_hook_survives_an_inplace_activation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Linear(16, 4))
    monitor = vs.Monitor(model, config=everything())
    x, y = next(batches(1))
    h = model[0](x)
    h.retain_grad()
    nn.functional.cross_entropy(model[2](torch.relu(h)), y).backward()
    expected = h.grad.double().std(correction=0).item()
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    monitor.step()
    monitor.flush()
    assert _step_metrics(monitor, 0)[("0", "out_grad_std")] == pytest.approx(expected, rel=1e-5)
    monitor.close()


def test_top_level_exports():
    from vitalstats import monitor

    assert vs.Monitor is monitor.Monitor and vs.Finding is monitor.Finding
    assert vs.lint is monitor.lint


def test_conv_channels_are_the_units_of_a_convolutional_relu():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 2)
    )
    nn.init.constant_(model[0].bias[:3], -50.0)  # three channels can never fire
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = vs.Monitor(model, optimizer=opt, config=everything())
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        relu = torch.relu(model[0](x)).double()
    train(model, opt, monitor, [(x, torch.tensor([0, 1, 0, 1]))])
    monitor.flush()
    metrics = _step_metrics(monitor, 0)
    dead = (relu.amax((0, 2, 3)) == 0).double().mean().item()
    assert dead >= 3 / 8
    assert metrics[("1", "act_dead_fraction")] == pytest.approx(dead)
    assert metrics[("1", "act_std")] == pytest.approx(relu.std(correction=0).item(), rel=1e-5)
    monitor.close()


def test_bfloat16_model_is_measured_in_float32_sums():
    model = mlp().to(torch.bfloat16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = vs.Monitor(model, optimizer=opt, config=everything())
    data = [(x.to(torch.bfloat16), y) for x, y in batches(2)]
    train(model, opt, monitor, data)
    monitor.flush()
    metrics = _step_metrics(monitor, 1)
    values = [metrics[(layer, "act_std")] for layer in ("0", "1", "2")]
    assert all(math.isfinite(v) and v > 0 for v in values)
    assert math.isfinite(metrics[("0.weight", "adam_step_rms")])
    monitor.close()


def test_sequence_relu_units_are_the_features_after_a_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    nn.init.constant_(model[0].bias[:2], -50.0)  # two features never fire
    monitor = vs.Monitor(model, config=everything())
    model(torch.randn(3, 5, 4)).sum().backward()  # (N, L, C)
    monitor.step()
    monitor.flush()
    assert _step_metrics(monitor, 0)[("1", "act_dead_fraction")] == pytest.approx(2 / 6)
    monitor.close()


class _Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


def test_sigmoid_saturation_and_nonfinite_fraction_match_oracles():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Sigmoid(), nn.Linear(16, 16), _Log())
    with torch.no_grad():
        model[0].weight.mul_(5)
    monitor = vs.Monitor(model, config=everything())
    x, _ = next(batches(1))
    with torch.no_grad():
        s = model[1](model[0](x)).double()
        logs = model[3](model[2](s.float()))
    model(x).nansum().backward()
    monitor.step()
    monitor.flush()
    metrics = _step_metrics(monitor, 0)
    saturated = ((2 * s - 1).abs() > 0.97).double().mean().item()
    assert 0 < saturated < 1
    assert metrics[("1", "act_saturated_fraction")] == pytest.approx(saturated)
    nonfinite = (~torch.isfinite(logs)).double().mean().item()
    assert 0 < nonfinite < 1
    assert metrics[("3", "act_nonfinite_fraction")] == pytest.approx(nonfinite)
    monitor.close()


@pytest.mark.slow
def test_attaching_before_torch_compile_keeps_the_layer_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    config = MonitorConfig(activations_every=1, flush_every=2)
    monitor = vs.Monitor(model, optimizer=opt, config=config)
    compiled = torch.compile(model, backend="eager")  # dynamo decides about hooks; no C++ build
    x, y = next(batches(1))
    with torch.no_grad():
        expected = model[0](x).double().std(correction=0).item()
    train(compiled, opt, monitor, [(x, y)])
    monitor.flush()
    assert _step_metrics(monitor, 0)[("0", "act_std")] == pytest.approx(expected, rel=1e-5)
    monitor.close()


def test_gradients_of_a_closure_step_are_this_steps_gradients():
    """optimizer.step(closure) (LBFGS, Lightning) computes the gradients inside step()."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = vs.Monitor(model, optimizer=opt, config=everything(flush_every=100))
    expected = []
    for x, y in batches(3):

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            expected.append(model[0].weight.grad.double().norm().item())
            return loss

        loss = opt.step(closure)
        monitor.step(loss=loss)
    recorded = [m.scalars[("0.weight", "grad_norm")] for m in monitor.flush()]
    np.testing.assert_allclose(recorded, expected, rtol=1e-6)
    monitor.close()


class _ConsumingSGD(torch.optim.SGD):
    """SGD that uses up its gradients in place (as some third-party optimisers do), through
    super().step(): torch then fires the step hooks around both calls."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.zero_()
        return loss


@pytest.mark.parametrize("closure_as", ["positional", "keyword"])
def test_gradients_are_read_before_a_plain_step_and_after_a_closure_step(closure_as):
    """Without a closure the gradients are read before optimizer.step() runs (an optimiser
    may consume them); with one, passed either way, they exist only after it. A subclass's
    super().step() is one optimiser step, not two."""
    model = mlp()
    torch.optim.SGD(model.parameters(), lr=0.1)  # torch now hooks SGD.step too
    opt = _ConsumingSGD(model.parameters(), lr=0.1)
    monitor = vs.Monitor(model, optimizer=opt, config=everything(flush_every=100))
    expected = []
    for x, y in batches(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        expected.append(model[0].weight.grad.double().norm().item())
        opt.step()
        monitor.step()
    for x, y in batches(2, seed=5):

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        loss = opt.step(closure) if closure_as == "positional" else opt.step(closure=closure)
        monitor.step(loss=loss)
    window = monitor.flush()
    np.testing.assert_allclose(  # read twice (hooks around super().step()): sqrt(2) x
        [m.scalars[("0.weight", "grad_norm")] for m in window[:2]], expected, rtol=1e-6
    )
    assert [m.scalars[("0.weight", "grad_norm")] for m in window[2:]] == [0.0, 0.0]  # consumed
    monitor.close()


def test_adam_moment_statistics_agree_with_vs_optim_moment_stats_under_amsgrad():
    """One metric name, one definition: the monitor's scratch-buffer path and
    vs.optim.moment_stats give the same figures (AMSGrad uses max_exp_avg_sq)."""
    model = mlp((8, 16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, amsgrad=True, weight_decay=0.0)
    monitor = vs.Monitor(model, optimizer=opt, config=everything())
    train(model, opt, monitor, batches(4))
    monitor.flush()
    metrics = _step_metrics(monitor, 3)
    stats = vs.optim.moment_stats(opt, model.named_parameters())
    for i, name in enumerate(stats.names):
        for metric, column in (
            ("adam_m_hat_abs_mean", stats.m_hat_abs_mean),
            ("adam_sqrt_v_hat_mean", stats.sqrt_v_hat_mean),
            ("adam_step_rms", stats.step_rms),
        ):
            assert metrics[(name, metric)] == pytest.approx(column[i].item(), rel=1e-5)
    monitor.close()


def test_a_failing_diagnosis_warns_once_and_the_statistics_are_still_recorded(monkeypatch):
    """A diagnosis rule that raises (a vitalstats bug) must not stop the user's training:
    one warning asking for a report, and every step's statistics still land in history."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = vs.Monitor(model, optimizer=opt, config=everything(flush_every=2))

    def broken(metrics):
        raise ZeroDivisionError("a rule met data it did not expect")

    monkeypatch.setattr(monitor._diagnoser, "observe", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, opt, monitor, batches(6))
    messages = [str(w.message) for w in caught if "diagnosing" in str(w.message)]
    assert len(messages) == 1 and "ZeroDivisionError" in messages[0] and "report" in messages[0]
    assert [m.step for m in monitor.history] == list(range(6))
    assert all(("0.weight", "grad_norm") in m.scalars for m in monitor.history)
    monitor.close()
