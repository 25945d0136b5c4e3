"""The multi-tensor Adam step gives the same bits as the single-tensor one and as torch's."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim.adam import adam as torch_adam

from vitalstats.optim import AdamHyperParameters, adam_multi_tensor, adam_single_tensor


def make_state(seed: int, dtypes: list[torch.dtype], first_steps: list[int], amsgrad: bool):
    """Parameters of mixed dtypes, at different steps, with non-trivial moments."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {"params": [], "grads": [], "exp_avgs": [], "exp_avg_sqs": [], "max": [], "steps": []}
    for index, (dtype, step) in enumerate(zip(dtypes, first_steps)):
        shape = (index + 1, 3)
        tensors["params"].append(torch.randn(shape, generator=generator).to(dtype))
        tensors["grads"].append(torch.randn(shape, generator=generator).to(dtype))
        tensors["exp_avgs"].append(0.1 * torch.randn(shape, generator=generator).to(dtype))
        second = 0.01 * torch.rand(shape, generator=generator).to(dtype)
        tensors["exp_avg_sqs"].append(second)
        if amsgrad:
            tensors["max"].append(second * 1.5)
        tensors["steps"].append(torch.tensor(float(step)))
    return tensors


def clone(tensors):
    return {key: [t.clone() for t in value] for key, value in tensors.items()}


@settings(max_examples=25, deadline=None)
@given(
    dtypes=st.lists(st.sampled_from([torch.float32, torch.float64]), min_size=1, max_size=4),
    first_step=st.integers(0, 50),
    amsgrad=st.booleans(),
    maximize=st.booleans(),
    weight_decay=st.sampled_from([0.0, 0.1]),
    decoupled=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_multi_tensor_equals_single_tensor_and_torch(
    dtypes, first_step, amsgrad, maximize, weight_decay, decoupled, seed
):
    first_steps = [first_step + 3 * i for i in range(len(dtypes))]  # steps differ per param
    start = make_state(seed, dtypes, first_steps, amsgrad)
    hyper = AdamHyperParameters(
        lr=3e-3,
        beta1=0.9,
        beta2=0.99,
        eps=1e-8,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
        decoupled_weight_decay=decoupled,
    )
    results = []
    for step_function in (adam_single_tensor, adam_multi_tensor):
        state = clone(start)
        step_function(
            state["params"],
            state["grads"],
            state["exp_avgs"],
            state["exp_avg_sqs"],
            state["max"],
            state["steps"],
            hyper,
        )
        results.append(state)
    reference = clone(start)
    torch_adam(
        reference["params"],
        reference["grads"],
        reference["exp_avgs"],
        reference["exp_avg_sqs"],
        reference["max"],
        reference["steps"],
        foreach=True,
        amsgrad=amsgrad,
        beta1=0.9,
        beta2=0.99,
        lr=3e-3,
        weight_decay=weight_decay,
        eps=1e-8,
        maximize=maximize,
        decoupled_weight_decay=decoupled,
    )
    results.append(reference)
    for key in start:
        for single, multi, theirs in zip(*(result[key] for result in results)):
            assert torch.equal(single, multi), key
            assert torch.equal(multi, theirs), key
    assert [s.item() for s in results[1]["steps"]] == [s + 1.0 for s in first_steps]


def test_gradients_are_left_untouched():
    state = make_state(0, [torch.float32] * 2, [0, 0], amsgrad=False)
    grads_before = [g.clone() for g in state["grads"]]
    hyper = AdamHyperParameters(
        lr=1e-3,
        beta1=0.9,
        beta2=0.999,
        eps=1e-8,
        weight_decay=0.1,
        amsgrad=False,
        maximize=True,
        decoupled_weight_decay=False,
    )
    adam_multi_tensor(
        state["params"],
        state["grads"],
        state["exp_avgs"],
        state["exp_avg_sqs"],
        [],
        state["steps"],
        hyper,
    )
    assert all(torch.equal(a, b) for a, b in zip(grads_before, state["grads"]))


def test_first_step_moves_each_coordinate_by_lr():
    """At t = 1, m_hat = g and v_hat = g*g, so the step is lr * sign(g) (up to eps)."""
    param, grad = torch.zeros(4), torch.tensor([3.0, -0.5, 1e-3, -20.0])
    hyper = AdamHyperParameters(
        lr=0.1,
        beta1=0.9,
        beta2=0.999,
        eps=0.0,
        weight_decay=0.0,
        amsgrad=False,
        maximize=False,
        decoupled_weight_decay=False,
    )
    adam_multi_tensor(
        [param], [grad], [torch.zeros(4)], [torch.zeros(4)], [], [torch.tensor(0.0)], hyper
    )
    torch.testing.assert_close(param, -0.1 * grad.sign())
