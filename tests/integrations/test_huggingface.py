"""VitalstatsTrainerCallback inside a real transformers.Trainer (skips when absent)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers", reason="transformers is an optional extra")

from vitalstats.integrations.huggingface import VitalstatsTrainerCallback  # noqa: E402
from vitalstats.store import RunStore  # noqa: E402


class TinyRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.raw_losses: list[float] = []

    def forward(self, x, labels=None):
        prediction = self.net(x)
        loss = None if labels is None else nn.functional.mse_loss(prediction, labels)
        if loss is not None and self.training:
            self.raw_losses.append(loss.item())  # the oracle: every micro-batch's own loss
        return {"loss": loss, "logits": prediction}


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int):
        generator = torch.Generator().manual_seed(0)
        self.x, self.y = (
            torch.randn(n, 4, generator=generator),
            torch.randn(n, 1, generator=generator),
        )

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return {"x": self.x[index], "labels": self.y[index]}


def test_one_monitor_step_per_optimizer_step_with_accumulation(tmp_path):
    store = tmp_path / "hf.sqlite"
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=5, gradient_accumulation_steps=2,
        num_train_epochs=1, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
        remove_unused_columns=False, disable_tqdm=True,
    )  # fmt: skip
    model = TinyRegressor()
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Rows(40),
        callbacks=[VitalstatsTrainerCallback(store=store, run_name="hf")],
    )  # fmt: skip
    trainer.train()
    with RunStore(store, readonly=True) as reader:
        run = reader.run("hf")
        steps, losses = reader.series("hf", "", "loss")
    assert run.status == "finished"
    assert trainer.state.global_step == 4
    np.testing.assert_array_equal(steps, np.arange(4))
    expected = np.array(model.raw_losses).reshape(-1, 2).mean(axis=1)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
