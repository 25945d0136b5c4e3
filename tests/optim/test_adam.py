"""vs.optim.Adam / AdamW against torch.optim.Adam / AdamW (the oracle) and float64 maths."""

from __future__ import annotations

import copy

import pytest
import torch
from sklearn.datasets import load_breast_cancer

import vitalstats as vs

OPTIMIZERS = [(vs.optim.Adam, torch.optim.Adam), (vs.optim.AdamW, torch.optim.AdamW)]


@pytest.fixture(scope="module")
def breast_cancer() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    return x, torch.tensor(data.target, dtype=torch.float32)


def make_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(30, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 1),
    )


def train(model, optimizer, data, steps, scheduler=None, batch=64):
    x, y = data
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for step in range(steps):
        start = (step * batch) % (len(x) - batch)
        optimizer.zero_grad()
        loss_fn(model(x[start : start + batch]).squeeze(1), y[start : start + batch]).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize(("ours", "theirs"), OPTIMIZERS, ids=["Adam", "AdamW"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"amsgrad": True},
        {"weight_decay": 0.05},
        {"weight_decay": 0.05, "amsgrad": True, "maximize": False, "foreach": False},
        {"betas": (0.8, 0.99), "eps": 1e-6, "lr": 3e-3},
    ],
    ids=["default", "amsgrad", "weight_decay", "single_tensor", "hyper"],
)
def test_200_step_trajectory_matches_torch_on_breast_cancer(ours, theirs, options, breast_cancer):
    model_ours, model_torch = make_mlp(), make_mlp()
    reference = train(model_torch, theirs(model_torch.parameters(), **options), breast_cancer, 200)
    result = train(model_ours, ours(model_ours.parameters(), **options), breast_cancer, 200)
    assert (result - reference).abs().max().item() <= 1e-6
    assert torch.equal(result, reference)  # same float operations, same order: same bits


def test_adam_weight_decay_is_l2_and_adamw_is_decoupled(breast_cancer):
    """The two weight decays differ; each matches its torch counterpart, not the other."""
    adam_model, adamw_model = make_mlp(), make_mlp()
    adam = train(
        adam_model, vs.optim.Adam(adam_model.parameters(), weight_decay=0.1), breast_cancer, 20
    )
    adamw = train(
        adamw_model, vs.optim.AdamW(adamw_model.parameters(), weight_decay=0.1), breast_cancer, 20
    )
    torch_model = make_mlp()
    torch_decoupled = train(
        torch_model,
        torch.optim.Adam(torch_model.parameters(), weight_decay=0.1, decoupled_weight_decay=True),
        breast_cancer,
        20,
    )
    assert not torch.allclose(adam, adamw)
    assert torch.equal(adamw, torch_decoupled)


def float64_adam_reference(params, grads_per_step, lr, betas, eps, weight_decay, decoupled):
    """The textbook algorithm (seed 000, plus weight decay) in float64, written out plainly."""
    beta1, beta2 = betas
    thetas = [p.detach().double().clone() for p in params]
    m = [torch.zeros_like(t) for t in thetas]
    v = [torch.zeros_like(t) for t in thetas]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            g = g.double()
            if weight_decay and decoupled:
                thetas[i] = thetas[i] - lr * weight_decay * thetas[i]
            elif weight_decay:
                g = g + weight_decay * thetas[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat, v_hat = m[i] / (1 - beta1**t), v[i] / (1 - beta2**t)
            thetas[i] = thetas[i] - lr * m_hat / (v_hat.sqrt() + eps)
    return thetas


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_matches_float64_textbook_adam(decoupled, foreach):
    generator = torch.Generator().manual_seed(3)
    params = [
        torch.randn(5, 4, generator=generator, dtype=torch.float64, requires_grad=True),
        torch.randn(3, generator=generator, dtype=torch.float64, requires_grad=True),
    ]
    grads_per_step = [
        [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in params]
        for _ in range(30)
    ]
    expected = float64_adam_reference(
        params, grads_per_step, 1e-2, (0.9, 0.999), 1e-8, 0.1, decoupled
    )
    optimizer = vs.optim.Adam(
        params, lr=1e-2, weight_decay=0.1, foreach=foreach, decoupled_weight_decay=decoupled
    )
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("ours", "theirs"), OPTIMIZERS, ids=["Adam", "AdamW"])
def test_lr_schedulers_drive_ours_like_torch(ours, theirs, breast_cancer):
    def with_schedulers(optimizer_class, model):
        optimizer = optimizer_class(model.parameters(), lr=1e-2, weight_decay=0.01)
        warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=10)
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=40)
        chain = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[10])
        return optimizer, chain

    model_ours, model_torch = make_mlp(), make_mlp()
    optimizer_ours, scheduler_ours = with_schedulers(ours, model_ours)
    optimizer_torch, scheduler_torch = with_schedulers(theirs, model_torch)
    result = train(model_ours, optimizer_ours, breast_cancer, 50, scheduler_ours)
    reference = train(model_torch, optimizer_torch, breast_cancer, 50, scheduler_torch)
    assert optimizer_ours.param_groups[0]["lr"] == optimizer_torch.param_groups[0]["lr"]
    assert torch.equal(result, reference)


def test_tensor_lr_works_with_foreach_and_matches_torch(breast_cancer):
    """torch refuses a tensor lr with foreach=True; ours accepts it and matches torch's
    single-tensor result, also after a scheduler changed the tensor in place."""
    model_ours, model_torch = make_mlp(), make_mlp()
    ours = vs.optim.AdamW(model_ours.parameters(), lr=torch.tensor(5e-3), foreach=True)
    theirs = torch.optim.AdamW(model_torch.parameters(), lr=torch.tensor(5e-3), foreach=False)
    scheduler_ours = torch.optim.lr_scheduler.StepLR(ours, step_size=5, gamma=0.5)
    scheduler_torch = torch.optim.lr_scheduler.StepLR(theirs, step_size=5, gamma=0.5)
    result = train(model_ours, ours, breast_cancer, 20, scheduler_ours)
    reference = train(model_torch, theirs, breast_cancer, 20, scheduler_torch)
    assert torch.equal(result, reference)


def test_param_groups_with_their_own_hyper_parameters(breast_cancer):
    def grouped(optimizer_class, model):
        return optimizer_class(
            [
                {"params": model[0].parameters(), "lr": 1e-2, "amsgrad": True},
                {"params": model[2].parameters(), "weight_decay": 0.2},
                {"params": model[4].parameters(), "betas": (0.5, 0.9)},
            ],
            lr=1e-3,
        )

    model_ours, model_torch = make_mlp(), make_mlp()
    result = train(model_ours, grouped(vs.optim.AdamW, model_ours), breast_cancer, 30)
    reference = train(model_torch, grouped(torch.optim.AdamW, model_torch), breast_cancer, 30)
    assert torch.equal(result, reference)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_state_layout_is_torchs(amsgrad, breast_cancer):
    model_ours, model_torch = make_mlp(), make_mlp()
    ours = vs.optim.Adam(model_ours.parameters(), amsgrad=amsgrad)
    theirs = torch.optim.Adam(model_torch.parameters(), amsgrad=amsgrad)
    train(model_ours, ours, breast_cancer, 3)
    train(model_torch, theirs, breast_cancer, 3)
    state_ours, state_torch = ours.state_dict(), theirs.state_dict()
    assert state_ours["param_groups"] == state_torch["param_groups"]
    for index, reference in state_torch["state"].items():
        assert state_ours["state"][index].keys() == reference.keys()
        for key, tensor in reference.items():
            got = state_ours["state"][index][key]
            assert (got.dtype, got.device, got.shape) == (tensor.dtype, tensor.device, tensor.shape)
            assert torch.equal(got, tensor), key
    assert state_ours["state"][0]["step"].dtype == torch.float32


@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
def test_state_dict_moves_between_torch_and_ours(direction, breast_cancer):
    model_a, model_b = make_mlp(), make_mlp()
    first_class, second_class = (
        (torch.optim.AdamW, vs.optim.AdamW)
        if direction == "torch_to_ours"
        else (vs.optim.AdamW, torch.optim.AdamW)
    )
    first = first_class(model_a.parameters(), lr=2e-3, amsgrad=True)
    train(model_a, first, breast_cancer, 10)
    model_b.load_state_dict(model_a.state_dict())
    second = second_class(model_b.parameters(), lr=1.0)  # overwritten by the loaded groups
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    assert second.param_groups[0]["lr"] == 2e-3 and second.param_groups[0]["amsgrad"]
    continued_first = train(model_a, first, breast_cancer, 10)
    continued_second = train(model_b, second, breast_cancer, 10)
    assert torch.equal(continued_first, continued_second)


def test_old_checkpoint_with_float_steps_and_missing_keys_loads():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = vs.optim.Adam([param])
    param.grad = torch.ones(3)
    optimizer.step()
    old = optimizer.state_dict()
    old["state"][0]["step"] = 1.0  # checkpoints before torch 1.12 stored a Python number
    for key in (
        "maximize",
        "foreach",
        "capturable",
        "differentiable",
        "fused",
        "decoupled_weight_decay",
    ):
        del old["param_groups"][0][key]
    fresh = vs.optim.Adam([param])
    fresh.load_state_dict(old)
    step = fresh.state[param]["step"]
    assert torch.is_tensor(step) and step.dtype == torch.float32 and step.item() == 1.0
    assert fresh.param_groups[0]["decoupled_weight_decay"] is False
    fresh.step()
    assert fresh.state[param]["step"].item() == 2.0


def test_adamw_keeps_decoupled_decay_when_loading_an_adam_state_dict():
    param = torch.nn.Parameter(torch.ones(2))
    adam_state = vs.optim.Adam([param], weight_decay=0.1).state_dict()
    adamw = vs.optim.AdamW([param])
    adamw.load_state_dict(adam_state)
    assert adamw.param_groups[0]["decoupled_weight_decay"] is True


@pytest.mark.parametrize("foreach", [False, True])
def test_complex_parameters_match_torch(foreach):
    """Complex parameters are stepped as (real, imag) pairs. torch's two paths differ in the
    last bit with L2 weight decay on complex tensors, so each of ours is held to torch's same
    path."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(4, 3, dtype=torch.complex64, generator=generator)
    grads = [torch.randn(4, 3, dtype=torch.complex64, generator=generator) for _ in range(10)]
    results = []
    for optimizer_class in (torch.optim.Adam, vs.optim.Adam):
        param = torch.nn.Parameter(start.clone())
        optimizer = optimizer_class(
            [param], lr=1e-2, weight_decay=0.1, amsgrad=True, foreach=foreach
        )
        for grad in grads:
            param.grad = grad.clone()
            optimizer.step()
        results.append(param.detach())
    assert torch.equal(results[0], results[1])


def test_closure_is_evaluated_with_grad_and_its_loss_returned():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = vs.optim.Adam([param], lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = param.square().sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss.item() == 5.0
    # first Adam step moves each coordinate by lr against the gradient's sign
    torch.testing.assert_close(param.detach(), torch.tensor([0.9, -1.9]))


def test_parameters_without_gradient_get_no_state_and_do_not_move():
    used, unused = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = vs.optim.AdamW([used, unused], weight_decay=0.5)
    used.grad = torch.ones(2)
    optimizer.step()
    assert unused not in optimizer.state and torch.equal(unused.detach(), torch.ones(2))


def test_step_counter_is_float64_under_a_float64_default_dtype():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        param = torch.nn.Parameter(torch.ones(2))
        optimizer = vs.optim.Adam([param])
        param.grad = torch.ones(2)
        optimizer.step()
        reference = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))])
        reference.param_groups[0]["params"][0].grad = torch.ones(2)
        reference.step()
        reference_step = next(iter(reference.state.values()))["step"]
        assert optimizer.state[param]["step"].dtype == reference_step.dtype == torch.float64
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1.0}, r"Adam: lr must be >= 0, got -1.0"),
        ({"eps": -1e-8}, r"eps must be >= 0"),
        ({"weight_decay": -0.1}, r"weight_decay must be >= 0"),
        ({"betas": (1.0, 0.999)}, r"betas\[0\] must be in \[0, 1\), got 1.0"),
        ({"betas": (0.9, -0.1)}, r"betas\[1\] must be in \[0, 1\)"),
        ({"betas": (0.9,)}, r"betas must be a pair"),
        ({"betas": (torch.tensor(0.9), torch.tensor(0.99))}, r"betas\[0\] is a tensor"),
        ({"lr": torch.tensor([1e-3, 1e-3])}, r"tensor lr must have exactly one element"),
        ({"capturable": True}, r"capturable=True \(CUDA-graph capture\) is not supported"),
        ({"differentiable": True}, r"differentiable=True .*torch.optim.Adam\(differentiable"),
        ({"fused": True, "foreach": True}, r"fused=True and foreach=True exclude each other"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vs.optim.Adam([torch.nn.Parameter(torch.ones(1))], **kwargs)


def test_a_loaded_group_asking_for_capturable_is_refused_at_step():
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = vs.optim.AdamW([param])
    optimizer.param_groups[0]["capturable"] = True
    param.grad = torch.ones(2)
    with pytest.raises(ValueError, match=r"AdamW: capturable=True"):
        optimizer.step()


@pytest.mark.parametrize(("ours", "theirs"), OPTIMIZERS, ids=["Adam", "AdamW"])
@pytest.mark.parametrize(
    "options",
    [{}, {"amsgrad": True, "weight_decay": 0.05, "maximize": True}],
    ids=["default", "all"],
)
def test_fused_matches_torch_fused_and_the_default_path_to_rounding(
    ours, theirs, options, breast_cancer
):
    model_ours, model_torch, model_default = make_mlp(), make_mlp(), make_mlp()
    options = {"lr": 3e-3, **options}
    fused = ours(model_ours.parameters(), fused=True, **options)
    result = train(model_ours, fused, breast_cancer, 50)
    reference = train(
        model_torch, theirs(model_torch.parameters(), fused=True, **options), breast_cancer, 50
    )
    default = train(model_default, ours(model_default.parameters(), **options), breast_cancer, 50)
    assert torch.equal(result, reference)
    torch.testing.assert_close(result, default, rtol=0, atol=1e-5)
    step = fused.state[next(model_ours.parameters())]["step"]
    assert step.dtype == torch.float32 and step.item() == 50.0
    stats = fused.moment_stats()  # reads the device-side counters too
    assert stats.step_rms.shape == (6,) and bool(torch.isfinite(stats.step_rms).all())


def test_fused_refuses_integer_parameters_by_name():
    optimizer = vs.optim.Adam([("counts", torch.zeros(3, dtype=torch.int64))], fused=True)
    optimizer.param_groups[0]["params"][0].grad = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match=r"parameter counts is torch.int64 on cpu"):
        optimizer.step()


def test_sparse_gradient_names_the_parameter():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = vs.optim.Adam([{"params": list(embedding.named_parameters())}])
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match=r"parameter weight \(10, 3\) has a sparse gradient"):
        optimizer.step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("ours", "theirs"), OPTIMIZERS, ids=["Adam", "AdamW"])
def test_cuda_trajectory_matches_torch_foreach(ours, theirs, breast_cancer):
    x, y = (t.cuda() for t in breast_cancer)
    model_ours, model_torch = make_mlp().cuda(), make_mlp().cuda()
    reference = train(
        model_torch, theirs(model_torch.parameters(), foreach=True, amsgrad=True), (x, y), 50
    )
    result = train(model_ours, ours(model_ours.parameters(), amsgrad=True), (x, y), 50)
    assert torch.equal(result, reference)
