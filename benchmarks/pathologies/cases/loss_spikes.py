"""One corrupted batch: inputs x100, shuffled labels, random tokens; a single loss spike."""

from __future__ import annotations

import torch

from pathologies.case import Proof, at_least, register
from pathologies.cases.activations import DigitsImageCase
from pathologies.cases.gradients import FlatDigitsCase
from pathologies.cases.healthy_text import GPT2Case
from pathologies.models import cnn, gpt2, mlp
from pathologies.proofs import loss_jump
from pathologies.schedules import warmup_cosine


def spike(losses: list[float], step: int) -> Proof:
    """loss[step] / median of the 5 losses before and the 5 after it (and, in the figure's
    name, its distance from the 20 losses before in their standard deviations)."""
    around = torch.tensor(losses[step - 5 : step] + losses[step + 1 : step + 6])
    ratio = losses[step] / float(around.median())
    sigmas = loss_jump(losses, step)
    figure = f"loss[{step}] / median of its 10 neighbours ({sigmas:.0f} sigmas over the 20 before)"
    return at_least(figure, ratio, 2)


@register
class SpikeMlpScaledBatch(FlatDigitsCase):
    name = "loss_spike_mlp_digits_inputs_x100_at_60"
    arch = "MLP 64-128-128-10 ReLU"
    category = "loss_spike"
    summary = "Adam lr 1e-3; the batch of step 60 arrives unnormalised (x100)"
    corrupt_at = 60

    def setup(self) -> None:
        self.data()
        self.model = mlp((64, 128, 128, 10))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def loss(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        if step == self.corrupt_at:
            x = x * 100
        return torch.nn.functional.cross_entropy(self.model(x), y)

    def prove(self, losses: list[float]) -> Proof:
        return spike(losses, self.corrupt_at)


@register
class SpikeCnnShuffledLabels(DigitsImageCase):
    name = "loss_spike_cnn_digits_shuffled_labels_at_150"
    arch = "CNN 2x(conv-ReLU-pool)"
    category = "loss_spike"
    summary = "Adam lr 1e-3; the labels of the step-150 batch are shuffled (a bad shard)"
    corrupt_at = 150

    def setup(self) -> None:
        self.data()
        self.model = cnn((16, 32))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def loss(self, step: int) -> torch.Tensor:
        x, y = self.batches(step)
        if step == self.corrupt_at:
            y = y[torch.randperm(y.numel(), generator=torch.Generator().manual_seed(1))]
        return torch.nn.functional.cross_entropy(self.model(x), y)

    def prove(self, losses: list[float]) -> Proof:
        return spike(losses, self.corrupt_at)


@register
class SpikeGpt2RandomTokens(GPT2Case):
    name = "loss_spike_gpt2_random_tokens_at_200"
    arch = "GPT-2 (transformers)"
    category = "loss_spike"
    summary = "healthy GPT-2 loop; the step-200 batch is random bytes (a corrupt shard)"
    clip = 1.0
    corrupt_at = 200

    def setup(self) -> None:
        self.data()
        self.model = gpt2()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.1)
        self.scheduler = warmup_cosine(self.optimizer, 30, self.steps)
        clean = self.windows

        def windows(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            ids, targets = clean(step)
            if step == self.corrupt_at:
                g = torch.Generator().manual_seed(2)
                noise = torch.randint(
                    0, int(clean.text.max()) + 1, (ids.shape[0], ids.shape[1] + 1), generator=g
                )
                return noise[:, :-1], noise[:, 1:]
            return ids, targets

        self.windows = windows

    def prove(self, losses: list[float]) -> Proof:
        return spike(losses, self.corrupt_at)
