import copy

import pytest
import torch
from torch import nn

import vitalstats as vs


def _output_stds(model, batch):
    """Each Linear/Conv output's std on the batch, float64, measured independently."""
    stds = {}

    def record(name):
        def hook(module, inputs, output):
            stds.setdefault(name, output.double().std(correction=0).item())

        return hook

    hooks = [
        m.register_forward_hook(record(name))
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
    ]
    with torch.no_grad():
        model(batch)
    for hook in hooks:
        hook.remove()
    return stds


def test_every_layer_outputs_the_target_std_on_the_batch():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    batch = 3.0 * torch.randn(128, 32)
    records = vs.init.lsuv_(model, batch, generator=torch.Generator().manual_seed(0))
    assert [r.name for r in records] == ["0", "2", "4"]
    assert all(r.converged and r.iterations >= 1 for r in records)
    stds = _output_stds(model, batch)
    for record in records:
        assert stds[record.name] == pytest.approx(1.0, abs=0.05)
        assert stds[record.name] == pytest.approx(record.final_std, rel=1e-6)


def test_target_std_and_tolerance_are_respected():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    batch = torch.randn(64, 8)
    records = vs.init.lsuv_(model, batch, target_std=0.5, tol=0.01)
    for name, std in _output_stds(model, batch).items():
        assert abs(std - 0.5) <= 0.01 * 0.5, name
    assert all(r.final_std == pytest.approx(0.5, rel=0.01) for r in records)


def test_conv_with_batch_norm_in_eval_mode_restores_mode_and_running_stats():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Conv2d(8, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
    ).eval()
    model[5].train()  # a mixed mode is restored exactly too
    buffers = copy.deepcopy(dict(model.named_buffers()))
    batch = torch.randn(16, 3, 8, 8)
    records = vs.init.lsuv_(model, batch)
    assert [r.name for r in records] == ["0", "4", "8"] and all(r.converged for r in records)
    assert [m.training for m in model.modules()] == [
        False,
        False,
        False,
        False,
        False,
        False,
        True,
        False,
        False,
        False,
    ]
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), name
    # the statistics were taken with batch statistics and dropout off:
    check = copy.deepcopy(model).train()
    check[3].eval()
    for name, std in _output_stds(check, batch).items():
        assert std == pytest.approx(1.0, abs=0.05), name


def test_train_mode_is_restored():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh()).train()
    vs.init.lsuv_(model, torch.randn(32, 4))
    assert all(m.training for m in model.modules())


def test_starts_from_orthogonal_weights_and_zero_biases():
    model = nn.Sequential(nn.Linear(20, 20))
    vs.init.lsuv_(model, torch.randn(50, 20), max_iter=1)
    w = model[0].weight.double()
    scale = w.norm(dim=1).mean()
    torch.testing.assert_close(
        w @ w.T / scale**2, torch.eye(20, dtype=torch.float64), atol=1e-5, rtol=0
    )
    assert torch.count_nonzero(model[0].bias) == 0


def test_one_rescale_suffices_with_zero_bias_and_max_iter_bounds_the_rest():
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
    batch = 3.0 * torch.randn(64, 8)  # an orthogonal layer keeps std 3: one rescale to 1
    assert [r.iterations for r in vs.init.lsuv_(model, batch)] == [1, 1]
    # float32 rounding keeps a 1e-15 tolerance out of reach: stops after max_iter rescales
    records = vs.init.lsuv_(model, batch, tol=1e-15, max_iter=3)
    assert [(r.iterations, r.converged) for r in records] == [(3, False), (3, False)]
    assert all(r.final_std == pytest.approx(1.0, rel=1e-5) for r in records)


def test_unreached_layers_are_named_in_a_warning():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.used(x)

    with pytest.warns(UserWarning, match=r"\['head'\] were not called"):
        records = vs.init.lsuv_(Unused(), torch.randn(8, 4))
    assert [r.name for r in records] == ["used"]


def test_bad_inputs_are_clear_errors():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"layer '0' \(Linear\) has output std 0.0"):
        vs.init.lsuv_(model, torch.zeros(8, 4))
    with pytest.raises(ValueError, match="target_std must be a positive number"):
        vs.init.lsuv_(model, torch.randn(8, 4), target_std=0)
    with pytest.raises(ValueError, match="tol must be a positive fraction"):
        vs.init.lsuv_(model, torch.randn(8, 4), tol=-1)
    with pytest.raises(ValueError, match="max_iter must be an int >= 1"):
        vs.init.lsuv_(model, torch.randn(8, 4), max_iter=0)
    with pytest.raises(ValueError, match="has no Linear or Conv layer"):
        vs.init.lsuv_(nn.Sequential(nn.ReLU()), torch.randn(8, 4))
