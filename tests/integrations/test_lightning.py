"""VitalstatsCallback inside a real PyTorch Lightning Trainer (skips when Lightning is absent)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

lightning = pytest.importorskip(
    "lightning.pytorch", reason="PyTorch Lightning is an optional extra"
)

from vitalstats.integrations.lightning import VitalstatsCallback  # noqa: E402
from vitalstats.store import RunStore  # noqa: E402


class TinyModule(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.raw_losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.raw_losses.append(loss.item())  # the oracle: every micro-batch's own loss
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_one_monitor_step_per_optimizer_step_with_accumulation(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(40, 4), torch.randn(40, 1))
    store = tmp_path / "pl.sqlite"
    trainer = lightning.Trainer(
        max_epochs=1, accumulate_grad_batches=2, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=1, callbacks=[VitalstatsCallback(store=store, run_name="pl")],
    )  # fmt: skip
    module = TinyModule()
    trainer.fit(module, DataLoader(data, batch_size=5), DataLoader(data, batch_size=5))
    with RunStore(store, readonly=True) as reader:
        run = reader.run("pl")
        steps, losses = reader.series("pl", "", "loss")
    assert run.status == "finished"
    assert trainer.global_step == 4  # 8 batches / accumulate 2
    np.testing.assert_array_equal(steps, np.arange(trainer.global_step))
    expected = np.array(module.raw_losses).reshape(-1, 2).mean(axis=1)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


class GradientRecordingModule(TinyModule):
    def __init__(self):
        super().__init__()
        self.grad_norms: list[float] = []

    def on_before_optimizer_step(self, optimizer):
        # the oracle: the gradient the optimiser is about to apply at this step
        self.grad_norms.append(self.net[0].weight.grad.double().norm().item())


def test_gradient_statistics_belong_to_the_step_that_applies_them(tmp_path):
    """Lightning runs forward/backward inside optimizer.step(closure): the monitor must read
    that step's gradients, not the previous step's."""
    from vitalstats.monitor import MonitorConfig

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(40, 4), torch.randn(40, 1))
    store = tmp_path / "grads.sqlite"
    callback = VitalstatsCallback(store=store, run_name="grads", config=MonitorConfig.everything())
    trainer = lightning.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[callback],
    )  # fmt: skip
    module = GradientRecordingModule()
    trainer.fit(module, DataLoader(data, batch_size=5))
    with RunStore(store, readonly=True) as reader:
        steps, norms = reader.series("grads", "net.0.weight", "grad_norm")
    np.testing.assert_array_equal(steps, np.arange(len(module.grad_norms)))
    np.testing.assert_allclose(norms, module.grad_norms, rtol=1e-6)
