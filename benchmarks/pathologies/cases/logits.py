"""Output logits that keep growing: a character model fine-tuned for many epochs on a tiny
set (two batches) with an untied output head whose learning rate is far above the body's
(GPT-2, and a TransformerEncoder): the logits grow past 100 and keep growing. The planted
cause is the head's learning rate, so ``LR_TOO_HIGH`` is an equally correct root.

A confident healthy classifier reaches max |logit| of about 30 on these data sets (the
benchmark's calibration table), so the bar is 100 and still growing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pathologies.case import Proof, register
from pathologies.cases.healthy_text import CharCase
from pathologies.models import CharTransformer, gpt2


class TinySetCase(CharCase):
    """Batches cycle over ``distinct`` fixed batches of windows (a tiny fine-tuning set)."""

    category = "logit_growth"
    also_root = ("LR_TOO_HIGH",)  # the head's learning rate is the planted cause
    distinct = 2
    head_lr = 0.5

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)

    def train_step(self, step: int) -> torch.Tensor:
        ids, targets = self.windows(step % self.distinct)
        logits = self.logits(ids)
        if step == self.steps // 2:  # one read for the proof: the logits' size mid-run
            self.mid_max = float(logits.detach().abs().max())
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss

    def prove(self, losses: list[float]) -> Proof:
        ids, _ = self.windows(0)
        with torch.no_grad():
            end_max = float(self.logits(ids).abs().max())
        holds = end_max >= 100 and end_max > self.mid_max
        return Proof(
            f"max |logit| at the end (at mid-run: {self.mid_max:.1f})",
            end_max,
            ">= 100 and still growing",
            holds,
        )


@register
class LogitGrowthGpt2(TinySetCase):
    name = "logit_growth_gpt2_untied_head_high_lr"
    arch = "GPT-2 (transformers), untied head"
    summary = "32 sequences for 300 steps; AdamW wd 0, body lr 1e-3, untied lm_head lr 0.5"

    def setup(self) -> None:
        self.data()
        self.model = gpt2(tie_word_embeddings=False)
        head = list(self.model.lm_head.parameters())
        body = [p for n, p in self.model.named_parameters() if not n.startswith("lm_head")]
        self.optimizer = torch.optim.AdamW(
            [{"params": body, "lr": 1e-3}, {"params": head, "lr": self.head_lr}], weight_decay=0.0
        )

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits


@register
class LogitGrowthEncoder(TinySetCase):
    name = "logit_growth_transformer_encoder_head_high_lr"
    arch = "nn.TransformerEncoder char model"
    summary = "32 sequences for 300 steps; Adam, body lr 1e-3, output head lr 0.5"

    def setup(self) -> None:
        self.data()
        self.model = CharTransformer()
        head = list(self.model.head.parameters())
        body = [p for n, p in self.model.named_parameters() if not n.startswith("head")]
        self.optimizer = torch.optim.Adam(
            [{"params": body, "lr": 1e-3}, {"params": head, "lr": self.head_lr}]
        )
