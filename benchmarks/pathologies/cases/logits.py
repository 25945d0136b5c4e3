"""Output logits that keep growing: a character model fine-tuned for many epochs on a tiny
set (two batches), with an untied GPT-2 head at a high lr, or a TransformerEncoder without a
final norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pathologies.case import Proof, register
from pathologies.cases.healthy_text import CharCase
from pathologies.models import CharTransformer, gpt2


class TinySetCase(CharCase):
    """Batches cycle over ``distinct`` fixed batches of windows (a tiny fine-tuning set)."""

    category = "logit_growth"
    distinct = 2

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
        holds = end_max >= 25 and end_max > self.mid_max
        return Proof(
            f"max |logit| at the end (at mid-run: {self.mid_max:.1f})",
            end_max,
            ">= 25 and still growing",
            holds,
        )


@register
class LogitGrowthGpt2(TinySetCase):
    name = "logit_growth_gpt2_untied_head_high_lr"
    arch = "GPT-2 (transformers), untied head"
    summary = "32 sequences for 300 steps; AdamW wd 0, body lr 1e-3, untied lm_head lr 5e-2"

    def setup(self) -> None:
        self.data()
        self.model = gpt2(tie_word_embeddings=False)
        head = list(self.model.lm_head.parameters())
        body = [p for n, p in self.model.named_parameters() if not n.startswith("lm_head")]
        self.optimizer = torch.optim.AdamW(
            [{"params": body, "lr": 1e-3}, {"params": head, "lr": 5e-2}], weight_decay=0.0
        )

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits


@register
class LogitGrowthEncoder(TinySetCase):
    name = "logit_growth_transformer_encoder_no_final_norm"
    arch = "nn.TransformerEncoder char model, no final norm"
    summary = (
        "32 sequences for 300 steps; pre-norm encoder without the final LayerNorm, Adam lr 1e-2"
    )

    def setup(self) -> None:
        self.data()
        self.model = CharTransformer(final_norm=False)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-2)
