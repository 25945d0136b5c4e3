"""Every diagnosis code: provoked on a real small model, silent on a healthy one."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import vitalstats as vs
from tests.monitor.helpers import batches, codes, everything, flat, mlp, run_codes, train
from vitalstats.monitor import CODES, MonitorConfig, Thresholds

PROVOKED_ELSEWHERE = {
    "BN_BUFFER_DIVERGENCE": "test_distributed.py",
    "AMP_STEPS_SKIPPED": "test_amp.py",
}


def _healthy_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 32, bias=False),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    )
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def _teacher_batches(steps: int, batch: int = 64, seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(8, 4, generator=generator)
    for _ in range(steps):
        x = torch.randn(batch, 8, generator=generator)
        yield x, (x @ teacher).argmax(1)


@pytest.fixture(scope="module")
def healthy_findings():
    model = _healthy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    config = everything(flush_every=20, thresholds=Thresholds(bn_warmup_steps=20))
    monitor = vs.Monitor(model, optimizer=opt, config=config)
    losses = train(model, opt, monitor, _teacher_batches(80))
    model.eval()
    with monitor.evaluating() as phase, torch.no_grad():
        for x, y in _teacher_batches(2, seed=9):
            phase.add_loss(nn.functional.cross_entropy(model(x), y))
    model.train()
    found = monitor.diagnose()
    monitor.close()
    assert losses[-1] < losses[0]  # it really trains
    return found


def test_healthy_model_has_no_findings(healthy_findings):
    assert healthy_findings == []


@pytest.mark.parametrize("code", sorted(CODES))
def test_code_is_silent_on_the_healthy_model(code, healthy_findings):
    assert code not in codes(healthy_findings)


# ------------------------------------------------------------------------------- gradients
def test_vanishing_gradients_in_a_deep_sigmoid_stack():
    model = mlp((8,) + (32,) * 10 + (4,), activation=nn.Sigmoid)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    found = vs.Monitor(model, optimizer=opt)
    train(model, opt, found, batches(21))  # grad norms every 10 steps: 3 samples
    findings = flat(found.diagnose())
    vanishing = [f for f in findings if f.code == "GRAD_VANISHING"]
    assert vanishing and vanishing[0].layer == "0.weight"
    assert vanishing[0].step == 20 and "x the largest" in vanishing[0].message


def test_a_transient_tiny_gradient_of_the_first_step_is_not_vanishing():
    """Judged on the median of the last measured steps, never on one sample."""
    model = mlp((8,) + (32,) * 10 + (4,), activation=nn.Sigmoid)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    found = vs.Monitor(model, optimizer=opt)
    train(model, opt, found, batches(11))  # two measured steps only
    assert "GRAD_VANISHING" not in codes(found.diagnose())


def test_exploding_gradients_in_a_deep_linear_stack_with_large_init():
    model = mlp((8,) + (32,) * 6 + (4,), activation=nn.Identity)
    for module in model:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=3 / math.sqrt(module.in_features))
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)
    assert "GRAD_EXPLODING" in run_codes(model, opt, 1)


# ------------------------------------------------------------------------------- activations
def test_saturated_tanh_units():
    model = mlp((8, 32, 32, 4), activation=nn.Tanh)
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Linear):
                module.weight.mul_(20)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    assert "ACT_SATURATED" in run_codes(model, opt, 1, config=everything())


def test_dead_relu_units():
    model = mlp((8, 32, 32, 4))
    nn.init.constant_(model[0].bias, -20.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    findings = vs.Monitor(model, optimizer=opt, config=everything())
    train(model, opt, findings, batches(1))
    dead = [f for f in flat(findings.diagnose()) if f.code == "DEAD_RELU"]
    assert dead[0].layer == "1" and "100.0% of units" in dead[0].message


def test_dead_units_are_not_judged_on_tiny_batches():
    model = mlp((8, 32, 32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    found = run_codes(model, opt, 3, config=everything(), data=batches(3, batch=2))
    assert "DEAD_RELU" not in found


def test_activation_std_shrinking_with_depth_under_default_linear_init():
    torch.manual_seed(0)  # torch's default init: std 1 / sqrt(3 fan_in), about 1/sqrt(3) a layer
    model = nn.Sequential(
        nn.Linear(8, 64, bias=False),
        *[nn.Linear(64, 64, bias=False) for _ in range(7)],
        nn.Linear(64, 4),
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    monitor = vs.Monitor(model, optimizer=opt)
    train(model, opt, monitor, batches(1))
    depth = [f for f in flat(monitor.diagnose()) if f.code == "ACT_STD_DEPTH"]
    assert depth and "shrinks" in depth[0].message


def test_activation_std_growing_with_depth():
    model = mlp((8,) + (64,) * 8 + (4,), activation=nn.Identity)
    for module in model:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=2 / math.sqrt(module.in_features))
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)
    monitor = vs.Monitor(model, optimizer=opt)
    train(model, opt, monitor, batches(1))
    depth = [f for f in flat(monitor.diagnose()) if f.code == "ACT_STD_DEPTH"]
    assert depth and "grows" in depth[0].message


def test_activation_std_growing_per_layer_in_a_shallow_naive_mlp():
    """The seeds' clinical MLP with N(0, 1) weights: two hidden layers are enough to see it."""
    model = mlp((30, 64, 32, 2))
    for module in model:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)
    monitor = vs.Monitor(model, optimizer=opt)
    train(model, opt, monitor, batches(1, features=30, classes=2))
    depth = [f for f in flat(monitor.diagnose()) if f.code == "ACT_STD_DEPTH"]
    assert depth and "grows" in depth[0].message and "per layer" in depth[0].message


def test_activation_std_per_layer_silent_with_kaiming_init():
    model = mlp((30, 64, 32, 2))
    for module in model:
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)
    monitor = vs.Monitor(model, optimizer=opt)
    train(model, opt, monitor, batches(1, features=30, classes=2))
    assert "ACT_STD_DEPTH" not in {f.code for f in flat(monitor.diagnose())}


# ------------------------------------------------------------------------------- updates
def test_update_ratio_too_low_with_a_tiny_learning_rate():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-5)
    found = run_codes(model, opt, 6, config=everything())
    assert "UPDATE_RATIO_LOW" in found and "UPDATE_RATIO_HIGH" not in found


def test_update_ratio_too_high_with_a_huge_learning_rate():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    found = run_codes(model, opt, 6, config=everything())
    assert "UPDATE_RATIO_HIGH" in found and "UPDATE_RATIO_LOW" not in found


# ------------------------------------------------------------------------------- NaN / Inf
class _Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class _SqrtOfZero(nn.Module):
    """Finite forward (adds sqrt(0) = 0), infinite derivative: NaN gradients upstream."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.sqrt(x - x)


def _nonfinite_findings(model, data, loss_fn=nn.functional.cross_entropy):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    monitor = vs.Monitor(model, optimizer=opt)
    train(model, opt, monitor, data, loss_fn)
    findings = [f for f in flat(monitor.diagnose()) if f.code.startswith("NONFINITE")]
    monitor.close()
    return findings


def test_nonfinite_input_reports_step_and_batch_index():
    data = list(batches(5))
    data[3][0][5, 2] = float("nan")
    findings = _nonfinite_findings(mlp(), data)
    assert len(findings) == 1
    assert (findings[0].code, findings[0].step) == ("NONFINITE_INPUT", 3)
    assert "batch index 5" in findings[0].message


def test_nonfinite_forward_names_the_first_layer_that_produced_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), _Log(), nn.Linear(8, 4))  # log of negatives
    findings = _nonfinite_findings(model, batches(2))
    assert [(f.code, f.layer, f.step) for f in findings] == [("NONFINITE_FORWARD", "1", 0)]


def test_nonfinite_gradient_with_a_finite_forward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), _SqrtOfZero(), nn.Linear(8, 4))
    findings = _nonfinite_findings(model, batches(2))
    assert [(f.code, f.layer, f.step) for f in findings] == [("NONFINITE_GRAD", "0.bias", 0)]


def test_nonfinite_loss():
    def bad_loss(logits, y):
        return torch.log(logits.mean() * 0 - 1)  # log(-1) = NaN, forward finite

    findings = _nonfinite_findings(mlp(), batches(2), bad_loss)
    assert [(f.code, f.step) for f in findings] == [("NONFINITE_LOSS", 0)]


# ------------------------------------------------------------------------------- loss
def test_loss_divergence_with_too_large_a_learning_rate():
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.2)  # above the stability limit 1.0
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(8, 1, generator=generator)
    data = []
    for _ in range(40):
        x = torch.randn(256, 8, generator=generator)
        data.append((x, x @ w))
    monitor = vs.Monitor(model, optimizer=opt)
    train(model, opt, monitor, data, nn.functional.mse_loss)
    assert "LOSS_DIVERGENCE" in codes(monitor.diagnose())


def test_loss_spike_from_one_bad_batch():
    model = mlp((8, 32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = list(batches(40))
    x, y = data[30]
    data[30] = (x * 100, y)
    monitor = vs.Monitor(model, optimizer=opt)
    train(model, opt, monitor, data)
    found = flat(monitor.diagnose())
    assert [f.step for f in found if f.code == "LOSS_SPIKE"] == [30]
    assert "LOSS_DIVERGENCE" not in {f.code for f in found}  # one batch moves no median


def _synthetic_losses(monitor, jump: float, at: int = 100, steps: int = 120) -> None:
    """A descent from 1.0 to 0.002 with 2 % noise; the loss of step ``at`` is ``jump``."""
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        level = 1.0 * 0.95**step + 0.002
        loss = level * (1 + 0.02 * torch.randn((), generator=generator))
        monitor.step(loss=torch.tensor(jump) if step == at else loss)


@pytest.mark.parametrize(("jump", "spike"), [(0.09, False), (0.5, True), (10.0, True)])
def test_loss_spike_must_undo_a_share_of_the_descent(jump, spike):
    """Near a loss of zero the step-to-step noise is tiny: 0.002 -> 0.09 is ~50 noise units
    but undoes 9% of the descent from 1.0 (below loss_spike_min_undone = 25%); 0.5 undoes 50%.
    A single 10.0 lifts the EWM mean (beta 0.98) 100x, but not the rolling median: no
    divergence."""
    model = nn.Linear(2, 1)
    monitor = vs.Monitor(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    _synthetic_losses(monitor, jump)
    found = flat(monitor.diagnose())
    assert [f.step for f in found if f.code == "LOSS_SPIKE"] == ([100] if spike else [])
    assert "LOSS_DIVERGENCE" not in {f.code for f in found}


# ------------------------------------------------------------------------------- BatchNorm
def _bn_model(**bn_kwargs) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16, **bn_kwargs), nn.ReLU(), nn.Linear(16, 4)
    )


def test_batchnorm_in_training_mode_inside_evaluating():
    model = _bn_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = vs.Monitor(model, optimizer=opt)
    train(model, opt, monitor, batches(2))
    with monitor.evaluating():  # forgot model.eval()
        model(torch.randn(16, 8))
    found = [f for f in flat(monitor.diagnose()) if f.code == "BN_TRAIN_IN_EVAL"]
    assert [f.layer for f in found] == ["1"] and "evaluating()" in found[0].message


def test_batchnorm_in_training_mode_under_no_grad():
    model = _bn_model()
    monitor = vs.Monitor(model)
    with torch.no_grad():
        model(torch.randn(16, 8))
    found = [f for f in flat(monitor.diagnose()) if f.code == "BN_TRAIN_IN_EVAL"]
    assert found and "no_grad" in found[0].message


def test_batchnorm_with_few_values_per_channel():
    model = _bn_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    found = [f for f in _diagnose(model, opt, batches(2, batch=4)) if f.code == "BN_FEW_VALUES"]
    assert found and "4 value(s) per channel" in found[0].message


def _diagnose(model, opt, data, config=None):
    monitor = vs.Monitor(model, optimizer=opt, config=config or MonitorConfig())
    train(model, opt, monitor, data)
    findings = flat(monitor.diagnose())
    monitor.close()
    return findings


def test_bias_before_batchnorm_static():
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    found = [f for f in flat(vs.Monitor(model).diagnose()) if f.code == "BIAS_BEFORE_NORM"]
    assert [f.layer for f in found] == ["0"]


class _OutOfOrder(nn.Module):
    """Children registered norm-first, so only the traced forward shows the bias feeding it."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 4)
        self.proj = nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.proj(x))))


def test_bias_before_batchnorm_traced_in_forward():
    model = _OutOfOrder()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    found = [f for f in _diagnose(model, opt, batches(1)) if f.code == "BIAS_BEFORE_NORM"]
    assert [f.layer for f in found] == ["proj"] and "norm" in found[0].message


def test_track_running_stats_flipped_after_construction():
    model = _bn_model()
    model[1].track_running_stats = False  # the seed's "inference" recipe
    assert "BN_TRACK_RUNNING_STATS_FLIPPED" in codes(vs.Monitor(model).diagnose())


def test_batch_statistics_at_inference():
    model = _bn_model(track_running_stats=False).eval()
    monitor = vs.Monitor(model)
    with monitor.evaluating(), torch.no_grad():
        model(torch.randn(16, 8))
    assert "BN_BATCH_STATS_AT_INFERENCE" in codes(monitor.diagnose())


def test_keras_style_momentum():
    found = [
        f
        for f in flat(vs.Monitor(_bn_model(momentum=0.99)).diagnose())
        if f.code == "BN_HIGH_MOMENTUM"
    ]
    assert found and "momentum=0.01" in found[0].fix


def test_drift_between_batch_and_running_statistics():
    model = _bn_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = [(x + (0.0 if i < 12 else 6.0), y) for i, (x, y) in enumerate(batches(14))]
    config = MonitorConfig(norm_layers_every=1, thresholds=Thresholds(bn_warmup_steps=10))
    found = [f for f in _diagnose(model, opt, data, config) if f.code == "BN_DRIFT"]
    assert [(f.layer, f.step) for f in found] == [("1", 12)]


def test_running_statistics_poisoned_by_one_nan_batch():
    model = _bn_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = list(batches(3))
    data[1][0][0, 0] = float("inf")
    found = codes(_diagnose(model, opt, data))
    assert "BN_RUNNING_NONFINITE" in found


def test_frozen_batchnorm_still_updating_running_statistics():
    model = _bn_model()
    model[1].weight.requires_grad_(False)
    model[1].bias.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    assert "BN_FROZEN_BUT_UPDATING" in codes(_diagnose(model, opt, batches(1)))
    model[1].eval()  # the fix: frozen norms in eval mode
    assert "BN_FROZEN_BUT_UPDATING" not in codes(_diagnose(model, opt, batches(1)))


# ------------------------------------------------------------------------------- the loop
def _loop(model, opt, steps, data=None, zero=True, loss_fn=nn.functional.cross_entropy,
          config=None, accumulate=1):  # fmt: skip
    monitor = vs.Monitor(model, optimizer=opt, config=config or MonitorConfig())
    for i, (x, y) in enumerate(data if data is not None else batches(steps * accumulate)):
        loss = loss_fn(model(x), y) / accumulate
        loss.backward()
        if (i + 1) % accumulate == 0:
            opt.step()
            if zero:
                opt.zero_grad()
            monitor.step(loss=loss)
    found = flat(monitor.diagnose())
    monitor.close()
    return found


def test_gradients_never_zeroed():
    model = mlp()
    found = _loop(model, torch.optim.SGD(model.parameters(), lr=1e-3), 8, zero=False)
    not_zeroed = [f for f in found if f.code == "GRAD_NOT_ZEROED"]
    assert not_zeroed and not_zeroed[0].step == 1 and "zero_grad()" in not_zeroed[0].message


def test_deliberate_gradient_accumulation_is_not_a_missing_zero_grad():
    model = mlp()
    found = _loop(model, torch.optim.SGD(model.parameters(), lr=1e-3), 8, accumulate=4)
    assert "GRAD_NOT_ZEROED" not in codes(found)


class _Probabilities(nn.Module):
    def __init__(self, final: nn.Module) -> None:
        super().__init__()
        self.net, self.final = mlp(), final

    def forward(self, x):
        return self.final(self.net(x))


def test_softmax_output_fed_to_cross_entropy():
    model = _Probabilities(nn.Softmax(dim=1))
    found = _loop(model, torch.optim.SGD(model.parameters(), lr=1e-2), 2)
    [finding] = [f for f in found if f.code == "LOSS_ON_PROBABILITIES"]
    assert "cross_entropy" in finding.message and "softmax" in finding.message


def test_sigmoid_output_fed_to_bce_with_logits():
    model = _Probabilities(nn.Sigmoid())
    data = [(x, nn.functional.one_hot(y, 4).float()) for x, y in batches(2)]
    found = _loop(model, torch.optim.SGD(model.parameters(), lr=1e-2), 2, data=data,
                  loss_fn=nn.functional.binary_cross_entropy_with_logits)  # fmt: skip
    assert "LOSS_ON_PROBABILITIES" in codes(found)


def test_log_of_softmax_with_nll_is_a_correct_loss():
    model = _Probabilities(nn.Softmax(dim=1))

    def nll_of_log(probabilities, y):
        return nn.functional.nll_loss(torch.log(probabilities), y)

    found = _loop(model, torch.optim.SGD(model.parameters(), lr=1e-2), 2, loss_fn=nll_of_log)
    assert "LOSS_ON_PROBABILITIES" not in codes(found)


def _dropout_bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(32, 4))  # fmt: skip


def test_training_steps_after_model_eval_was_never_undone():
    model = _dropout_bn_model().eval()
    found = _loop(model, torch.optim.SGD(model.parameters(), lr=1e-2), 3)
    [finding] = [f for f in found if f.code == "STEP_IN_EVAL_MODE"]
    assert "1" in finding.message and "3" in finding.message and "model.train()" in finding.fix


def test_training_mode_is_silent():
    model = _dropout_bn_model()
    assert "STEP_IN_EVAL_MODE" not in codes(
        _loop(model, torch.optim.SGD(model.parameters(), lr=1e-2), 3)
    )


def test_unscaled_inputs():
    scales = torch.tensor([1.0, 1.0, 1e3, 4e3, 0.01, 1.0, 1.0, 1.0])  # "miles driven"
    data = [(x * scales, y) for x, y in batches(2)]
    model = mlp()
    found = _loop(model, torch.optim.SGD(model.parameters(), lr=1e-5), 2, data=data)
    [finding] = [f for f in found if f.code == "INPUT_SCALE"]
    assert "vs.data.Standardize" in finding.fix and "span" in finding.message


def test_standardised_inputs_are_silent():
    model = mlp()
    assert "INPUT_SCALE" not in codes(_loop(model, torch.optim.SGD(model.parameters(), lr=1e-2), 2))


def test_a_plateau_from_the_start():
    model = mlp()
    found = _loop(
        model, torch.optim.SGD(model.parameters(), lr=1e-6), 200, data=batches(200, batch=64)
    )
    assert "LOSS_PLATEAU" in codes(found)


def test_a_learning_rate_far_too_high_is_named_before_the_run_turns_nan():
    model = mlp((8, 64, 64, 4))
    data = list(_teacher_batches(120))
    found = _loop(model, torch.optim.SGD(model.parameters(), lr=5.0), 120, data=data)
    told = vs.monitor.story(found)
    assert told[0].code == "LR_TOO_HIGH", [f.code for f in told]
    assert "lower the learning rate" in told[0].fix


def test_logits_growing_without_bound():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # separable data: the logits keep growing
    config = MonitorConfig(activations_every=10, flush_every=50)
    found = _loop(model, opt, 600, data=list(_teacher_batches(600)), config=config)
    assert "LOGIT_GROWTH" in codes(found) and "LR_TOO_HIGH" not in codes(found)


def test_every_code_has_a_provoking_test():
    import inspect
    import sys
    from pathlib import Path

    source = inspect.getsource(sys.modules[__name__])
    for code in set(CODES) - set(PROVOKED_ELSEWHERE):
        assert source.count(f'"{code}"') >= 1, code
    for code, file in PROVOKED_ELSEWHERE.items():
        assert f'"{code}"' in (Path(__file__).parent / file).read_text(), code
