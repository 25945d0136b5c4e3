"""moment_stats against float64 maths on the optimiser state and against the applied step."""

from __future__ import annotations

import pytest
import torch

import vitalstats as vs


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def take_steps(model, optimizer, steps, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(16, 6, generator=generator)).square().mean().backward()
        optimizer.step()


def float64_oracle(optimizer):
    """The four statistics from the state tensors, in float64, one parameter at a time."""
    rows = []
    for group in optimizer.param_groups:
        beta1, beta2 = group["betas"]
        lr = float(group["lr"])
        for param in group["params"]:
            state = optimizer.state[param]
            t = state["step"].item()
            m_hat = state["exp_avg"].double() / (1 - beta1**t)
            second = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
            v_hat = second.double() / (1 - beta2**t)
            step = lr * m_hat / (v_hat.sqrt() + group["eps"])
            rows.append(
                [
                    m_hat.abs().mean(),
                    v_hat.sqrt().mean(),
                    step.square().mean().sqrt(),
                    step.norm() / param.detach().double().norm(),
                ]
            )
    return torch.tensor(rows, dtype=torch.float64).T


def as_matrix(stats):
    return torch.stack(
        [stats.m_hat_abs_mean, stats.sqrt_v_hat_mean, stats.step_rms, stats.update_to_data]
    )


@pytest.mark.parametrize(
    "optimizer_class",
    [torch.optim.Adam, torch.optim.AdamW, vs.optim.Adam, vs.optim.AdamW],
    ids=["torch.Adam", "torch.AdamW", "vs.Adam", "vs.AdamW"],
)
@pytest.mark.parametrize("amsgrad", [False, True])
def test_matches_float64_oracle(optimizer_class, amsgrad):
    model = make_model()
    optimizer = optimizer_class(
        model.parameters(), lr=1e-2, betas=(0.8, 0.95), eps=1e-6, amsgrad=amsgrad
    )
    take_steps(model, optimizer, 7)
    stats = vs.optim.moment_stats(optimizer)
    assert stats.step_rms.dtype == torch.float64 and stats.step_rms.shape == (4,)
    torch.testing.assert_close(as_matrix(stats), float64_oracle(optimizer), rtol=1e-5, atol=0)


def test_step_rms_and_update_to_data_describe_the_step_just_taken():
    """Without weight decay Adam's update is exactly lr * m_hat / (sqrt(v_hat) + eps): the
    statistics after a step must describe the parameter change that step made."""
    model = make_model()
    optimizer = vs.optim.Adam(model.parameters(), lr=1e-2)
    take_steps(model, optimizer, 5)
    before = [p.detach().double().clone() for p in model.parameters()]
    take_steps(model, optimizer, 1, seed=7)
    stats = optimizer.moment_stats()
    for index, (old, new) in enumerate(zip(before, model.parameters())):
        update = new.detach().double() - old
        rms = update.square().mean().sqrt()
        torch.testing.assert_close(stats.step_rms[index], rms, rtol=1e-3, atol=0)
        ratio = update.norm() / new.detach().double().norm()
        torch.testing.assert_close(stats.update_to_data[index], ratio, rtol=1e-3, atol=0)


def test_first_step_statistics_are_known_in_closed_form():
    """At t = 1: m_hat = g, v_hat = g*g, so mean|m_hat| = mean sqrt(v_hat) = mean|g| and the
    step is lr * sign(g) (eps = 0): its RMS is lr."""
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0, -2.0, 4.0]))
    optimizer = vs.optim.Adam([param], lr=0.5, eps=0.0)
    param.grad = torch.tensor([0.5, -1.0, 2.0, -4.5])
    optimizer.step()
    stats = optimizer.moment_stats()
    expected_mean = torch.tensor([2.0], dtype=torch.float64)
    torch.testing.assert_close(stats.m_hat_abs_mean, expected_mean)
    torch.testing.assert_close(stats.sqrt_v_hat_mean, expected_mean)
    torch.testing.assert_close(stats.step_rms, torch.tensor([0.5], dtype=torch.float64))
    new_norm = param.detach().double().norm()
    torch.testing.assert_close(stats.update_to_data, (0.5 * 2 / new_norm).reshape(1))


def test_names_come_from_named_parameters_or_the_optimizer():
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters())
    take_steps(model, optimizer, 1)
    assert vs.optim.moment_stats(optimizer, model.named_parameters()).names == (
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    )
    assert vs.optim.moment_stats(optimizer).names[1] == "param_groups[0][1]"
    named_optimizer = vs.optim.Adam(model.named_parameters())  # torch keeps param_names
    take_steps(model, named_optimizer, 1)
    assert named_optimizer.moment_stats().names[2] == "2.weight"


def test_parameters_that_have_not_stepped_are_left_out():
    model = make_model()
    optimizer = vs.optim.Adam(model.parameters())
    assert optimizer.moment_stats().names == ()
    model[2].weight.requires_grad_(False)
    take_steps(model, optimizer, 2)
    assert optimizer.moment_stats(model.named_parameters()).names == (
        "0.weight",
        "0.bias",
        "2.bias",
    )


def test_tensor_lr_and_per_group_hyper_parameters():
    model = make_model()
    optimizer = vs.optim.AdamW(
        [
            {"params": model[0].parameters(), "lr": torch.tensor(3e-2), "amsgrad": True},
            {"params": model[2].parameters(), "betas": (0.5, 0.9), "eps": 1e-3},
        ],
        lr=1e-3,
    )
    take_steps(model, optimizer, 4)
    torch.testing.assert_close(
        as_matrix(optimizer.moment_stats()), float64_oracle(optimizer), rtol=1e-5, atol=0
    )


def test_mixed_dtypes_keep_parameter_order():
    model = make_model()
    model[0].double()
    optimizer = vs.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        optimizer.zero_grad()
        hidden = model[1](model[0](torch.randn(4, 6, generator=generator, dtype=torch.float64)))
        model[2](hidden.float()).square().mean().backward()
        optimizer.step()
    torch.testing.assert_close(
        as_matrix(optimizer.moment_stats()), float64_oracle(optimizer), rtol=1e-5, atol=0
    )


def test_scalars_rows_use_the_store_metric_names():
    model = make_model()
    optimizer = vs.optim.Adam(model.parameters())
    take_steps(model, optimizer, 2)
    stats = optimizer.moment_stats(model.named_parameters())
    rows = stats.scalars()
    assert len(rows) == 16
    assert ("2.bias", "adam_step_rms", stats.step_rms[3].item()) in rows
    assert {metric for _, metric, _ in rows} == {
        "adam_m_hat_abs_mean",
        "adam_sqrt_v_hat_mean",
        "adam_step_rms",
        "adam_update_to_data",
    }


def test_a_non_adam_optimizer_is_refused():
    model = make_model()
    with pytest.raises(TypeError, match=r"expected an Adam or AdamW optimizer.*got SGD"):
        vs.optim.moment_stats(torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_statistics_stay_on_the_device_without_sync():
    model = make_model().cuda()
    optimizer = vs.optim.Adam(model.parameters(), lr=torch.tensor(1e-2))
    generator = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 6, device="cuda", generator=generator)).square().mean().backward()
        optimizer.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats = optimizer.moment_stats()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert stats.step_rms.device.type == "cuda"
    torch.testing.assert_close(as_matrix(stats).cpu(), float64_oracle(optimizer), rtol=1e-5, atol=0)


def test_no_host_read_of_moments_or_parameters(monkeypatch):
    """Only the CPU step counters are read; every statistic stays a tensor (no device sync)."""
    model = make_model()
    optimizer = vs.optim.AdamW(model.parameters(), lr=torch.tensor(1e-2), amsgrad=True)
    take_steps(model, optimizer, 3)
    step_counters = {id(state["step"]) for state in optimizer.state.values()}
    item = torch.Tensor.item

    def item_of_step_counters_only(self):
        assert id(self) in step_counters, "host read of a statistic inside moment_stats"
        return item(self)

    def forbidden(*args, **kwargs):
        raise AssertionError("host read inside moment_stats")

    monkeypatch.setattr(torch.Tensor, "item", item_of_step_counters_only)
    for name in ("tolist", "cpu", "numpy", "__float__", "__bool__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    stats = optimizer.moment_stats()
    monkeypatch.undo()
    torch.testing.assert_close(as_matrix(stats), float64_oracle(optimizer), rtol=1e-5, atol=0)
