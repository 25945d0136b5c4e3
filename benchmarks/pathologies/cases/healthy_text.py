"""Healthy character models on Python's standard-library sources: GPT-2 and BERT
(transformers), nn.LSTM, nn.GRU, nn.RNN and nn.TransformerEncoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pathologies.case import Case, Proof, register, trained
from pathologies.data import VOCAB, CharWindows
from pathologies.models import CharRNN, CharTransformer, bert, gpt2
from pathologies.schedules import warmup_cosine

MASK_ID = len(VOCAB)  # BERT's extra token


class CharCase(Case):
    """Next-character prediction on windows of ``context`` characters, batch ``batch_size``;
    ``clip`` > 0 clips the gradient norm, ``scheduler`` (if set) steps after the optimiser."""

    context = 64
    batch_size = 16
    clip = 0.0
    steps = 300

    def data(self) -> None:
        self.windows = CharWindows(self.batch_size, self.context)
        self.scheduler = None

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)

    def train_step(self, step: int) -> torch.Tensor:
        ids, targets = self.windows(step)
        logits = self.logits(ids)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        self.optimizer.zero_grad()
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss

    def prove(self, losses: list[float]) -> Proof:
        # from ln(96) = 4.56 nats; the stdlib text's unigram entropy is about 3.2 nats
        return trained(losses, ratio=0.75)


class GPT2Case(CharCase):
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits


@register
class Gpt2CharsAdamw(GPT2Case):
    name = "healthy_gpt2_chars_adamw_warmup"
    arch = "GPT-2 (transformers)"
    summary = "GPT-2 2 layers n_embd 64, AdamW lr 1e-3 wd 0.1, 30 warm-up + cosine, clip 1.0"
    clip = 1.0

    def setup(self) -> None:
        self.data()
        self.model = gpt2()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.1)
        self.scheduler = warmup_cosine(self.optimizer, 30, self.steps)


@register
class Gpt2CharsBf16(GPT2Case):
    name = "healthy_gpt2_chars_bf16_accumulation"
    arch = "GPT-2 (transformers)"
    summary = "GPT-2, bf16 autocast, AdamW lr 6e-4, 4 micro-batches of 8 per step, clip 1.0"
    steps = 200

    def setup(self) -> None:
        self.data()
        self.windows = CharWindows(32, self.context)
        self.model = gpt2()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=6e-4, weight_decay=0.1)

    def train_step(self, step: int) -> torch.Tensor:
        ids, targets = self.windows(step)
        self.optimizer.zero_grad()
        total = torch.zeros(())
        for i, t in zip(ids.chunk(4), targets.chunk(4)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = self.model(input_ids=i).logits
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1)) / 4
            loss.backward()
            total += loss.detach().float()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return total


@register
class BertCharsMlm(Case):
    name = "healthy_bert_chars_mlm_adamw"
    arch = "BERT (transformers)"
    summary = "BertForMaskedLM 2 layers width 64, 15% characters masked, AdamW lr 1e-3, warm-up"
    steps = 300

    def setup(self) -> None:
        self.windows = CharWindows(16, 64)
        self.model = bert()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.01)
        self.scheduler = warmup_cosine(self.optimizer, 30, self.steps)

    def train_step(self, step: int) -> torch.Tensor:
        ids, _ = self.windows(step)
        g = torch.Generator().manual_seed(step)
        masked = torch.rand(ids.shape, generator=g) < 0.15
        inputs = torch.where(masked, torch.full_like(ids, MASK_ID), ids)
        labels = torch.where(masked, ids, torch.full_like(ids, -100))
        loss = self.model(input_ids=inputs, labels=labels).loss
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss

    def prove(self, losses: list[float]) -> Proof:
        return trained(losses, ratio=0.75)


@register
class LstmChars(CharCase):
    name = "healthy_lstm_chars_adam_clip"
    arch = "nn.LSTM char model"
    summary = "Embedding-LSTM(128)-Linear, Adam lr 2e-3, clip 1.0"
    clip = 1.0

    def setup(self) -> None:
        self.data()
        self.model = CharRNN("lstm")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=2e-3)


@register
class GruChars(CharCase):
    name = "healthy_gru_chars_adam"
    arch = "nn.GRU char model"
    summary = "Embedding-GRU(128)-Linear, Adam lr 2e-3"

    def setup(self) -> None:
        self.data()
        self.model = CharRNN("gru")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=2e-3)


@register
class RnnChars(CharCase):
    name = "healthy_rnn_chars_sgd_clip"
    arch = "nn.RNN (tanh) char model"
    summary = "Embedding-RNN(128, tanh)-Linear, SGD momentum 0.9 lr 0.1, clip 1.0"
    clip = 1.0

    def setup(self) -> None:
        self.data()
        self.model = CharRNN("rnn")
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)


@register
class TransformerEncoderChars(CharCase):
    name = "healthy_transformer_encoder_chars_adam"
    arch = "nn.TransformerEncoder char model"
    summary = "causal pre-norm TransformerEncoder 2 layers width 64, Adam lr 5e-4, warm-up"

    def setup(self) -> None:
        self.data()
        self.model = CharTransformer()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=5e-4)
        self.scheduler = warmup_cosine(self.optimizer, 30, self.steps)
