"""MonitorAdapter and the callbacks' hook logic, driven in the libraries' documented call order.

Lightning and transformers are not installed here, so these tests call the hook methods the
way the trainers do (per their documented event order) with a minimal stand-in for the trainer
state; tests against the real libraries are in test_lightning.py / test_huggingface.py and
run where those libraries are installed. The oracle for the recorded loss is the mean of the
micro-batch losses computed by the test's own loop.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch import nn

from vitalstats.integrations.adapter import MonitorAdapter, loss_tensor, unwrap_optimizer
from vitalstats.integrations.huggingface import TrainerHooks
from vitalstats.integrations.lightning import LightningHooks
from vitalstats.store import RunStore

ACCUMULATE = 2
BATCHES = 6


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _batches():
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 4, generator=generator), torch.randn(5, 1, generator=generator))
            for _ in range(BATCHES)]  # fmt: skip


def _expected_step_losses(micro_losses: list[float]) -> np.ndarray:
    return np.array(micro_losses, np.float64).reshape(-1, ACCUMULATE).mean(axis=1)


def test_loss_tensor_reads_tensors_dicts_and_model_outputs():
    loss = torch.tensor(0.5)
    assert loss_tensor(loss) is loss
    assert loss_tensor({"loss": loss, "logits": torch.ones(3)}) is loss
    assert loss_tensor(types.SimpleNamespace(loss=loss)) is loss
    assert loss_tensor(torch.ones(3)) is None
    assert loss_tensor({"logits": torch.ones(3)}) is None
    assert loss_tensor(None) is None


def test_lightning_hooks_record_one_step_per_optimizer_step(tmp_path):
    model, store = _model(), tmp_path / "pl.sqlite"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = types.SimpleNamespace(
        optimizers=[optimizer], global_step=0, accumulate_grad_batches=ACCUMULATE
    )
    callback = LightningHooks(store=store, run_name="lightning-like")
    callback.on_fit_start(trainer, model)
    callback.on_validation_start(trainer, model)  # Lightning's sanity check runs first
    with torch.no_grad():
        model.eval()
        model(torch.randn(3, 4))
    callback.on_validation_end(trainer, model)
    trainer.global_step = 10  # as if a checkpoint restored the step counter before training
    callback.on_train_start(trainer, model)
    model.train()
    micro_losses = []
    for index, (x, y) in enumerate(_batches()):
        loss = nn.functional.mse_loss(model(x), y)
        (loss / ACCUMULATE).backward()
        micro_losses.append(loss.item())
        if (index + 1) % ACCUMULATE == 0:
            optimizer.step()
            optimizer.zero_grad()
            trainer.global_step += 1
        # Lightning's automatic optimisation hands callbacks the normalised loss.
        outputs = {"loss": loss.detach() / ACCUMULATE}
        callback.on_train_batch_end(trainer, model, outputs, (x, y), index)
    callback.on_fit_end(trainer, model)
    assert callback.monitor is None
    with RunStore(store, readonly=True) as reader:
        (run,) = reader.runs()
        assert run.name == "lightning-like" and run.status == "finished"
        steps, values = reader.series(run.run_id, "", "loss")
    np.testing.assert_array_equal(steps, np.arange(BATCHES // ACCUMULATE))
    np.testing.assert_allclose(values, _expected_step_losses(micro_losses), rtol=1e-6)


def test_lightning_exception_marks_the_run_crashed(tmp_path):
    model, store = _model(), tmp_path / "crash.sqlite"
    trainer = types.SimpleNamespace(optimizers=[], global_step=0)
    callback = LightningHooks(store=store)
    callback.on_fit_start(trainer, model)
    callback.on_exception(trainer, model, RuntimeError("boom"))
    with RunStore(store, readonly=True) as reader:
        assert reader.runs()[0].status == "crashed"


class _OutputWithLoss(nn.Module):
    """A model that returns an object with ``.loss``, like a Hugging Face ModelOutput."""

    def __init__(self):
        super().__init__()
        self.body = _model()

    def forward(self, x, labels=None):
        prediction = self.body(x)
        loss = None if labels is None else nn.functional.mse_loss(prediction, labels)
        return types.SimpleNamespace(loss=loss, logits=prediction)


def test_trainer_hooks_take_the_loss_from_model_outputs_and_bracket_evaluation(tmp_path):
    model, store = _OutputWithLoss(), tmp_path / "hf.sqlite"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = types.SimpleNamespace(global_step=0)
    callback = TrainerHooks(store=store, run_name="hf-like")
    callback.on_train_begin(None, state, None, model=model, optimizer=optimizer)
    phases = []
    original = callback.monitor.evaluating

    def recording_evaluating():
        phases.append("enter")
        return original()

    callback.monitor.evaluating = recording_evaluating
    model.train()
    micro_losses = []
    for index, (x, y) in enumerate(_batches()):
        loss = model(x, labels=y).loss
        (loss / ACCUMULATE).backward()
        micro_losses.append(loss.item())
        if (index + 1) % ACCUMULATE == 0:
            optimizer.step()
            optimizer.zero_grad()
            state.global_step += 1
            callback.on_step_end(None, state, None)
        if index == 3:  # an evaluation in the middle: its loss must not count as training loss
            model.eval()
            with torch.no_grad():
                model(x, labels=y + 100.0)
            callback.on_evaluate(None, state, None, metrics={})
            model.train()
    callback.on_train_end(None, state, None)
    assert phases == ["enter"]
    assert callback.adapter._evaluation is None
    assert not model._forward_hooks and not model._forward_pre_hooks  # hooks removed
    with RunStore(store, readonly=True) as reader:
        steps, values = reader.series("hf-like", "", "loss")
    np.testing.assert_array_equal(steps, np.arange(BATCHES // ACCUMULATE))
    np.testing.assert_allclose(values, _expected_step_losses(micro_losses), rtol=1e-6)


def test_trainer_hooks_need_the_model_keyword():
    with pytest.raises(ValueError, match="got no model"):
        TrainerHooks().on_train_begin(None, types.SimpleNamespace(global_step=0), None)


def test_adapter_is_inert_before_start_and_after_finish():
    adapter = MonitorAdapter()
    adapter.micro_batch_end(torch.tensor(1.0), 1)
    adapter.optimizer_step_end()
    adapter.begin_evaluation()
    adapter.finish()
    assert adapter.monitor is None


def test_callback_classes_explain_the_missing_library():
    import importlib.util

    from vitalstats.integrations import huggingface, lightning

    if (
        importlib.util.find_spec("lightning") is None
        and importlib.util.find_spec("pytorch_lightning") is None
    ):
        with pytest.raises(ImportError, match="pip install lightning"):
            lightning.VitalstatsCallback
    if importlib.util.find_spec("transformers") is None:
        with pytest.raises(ImportError, match="pip install transformers"):
            huggingface.VitalstatsTrainerCallback


def test_unwrap_optimizer_finds_the_torch_optimizer_inside_wrappers():
    inner = torch.optim.SGD(_model().parameters(), lr=0.1)
    wrapper = types.SimpleNamespace(optimizer=inner)
    assert unwrap_optimizer(wrapper) is inner
    assert unwrap_optimizer(inner) is inner
    assert unwrap_optimizer(None) is None
