"""Architectures of the benchmark: ``torch.nn`` models and tiny ``transformers`` models built
from their configs (random init, no download). Sizes are chosen so one CPU step takes a few
to a few tens of milliseconds."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

from pathologies.data import VOCAB

Activation = Callable[[], nn.Module]


def mlp(
    sizes: tuple[int, ...],
    activation: Activation = nn.ReLU,
    final: nn.Module | None = None,
    norm: Callable[[int], nn.Module] | None = None,
) -> nn.Sequential:
    """Linear(-norm)-activation blocks over ``sizes``, a last Linear, then ``final`` if any."""
    layers: list[nn.Module] = []
    pairs = list(itertools.pairwise(sizes))
    for a, b in pairs[:-1]:
        layers.append(nn.Linear(a, b))
        if norm is not None:
            layers.append(norm(b))
        layers.append(activation())
    layers.append(nn.Linear(*pairs[-1]))
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers)


def cnn(
    channels: tuple[int, ...] = (16, 32),
    classes: int = 10,
    activation: Activation = nn.ReLU,
    batchnorm: bool = False,
    pool: bool = True,
    size: int = 8,
    final: nn.Module | None = None,
) -> nn.Sequential:
    """Conv3x3(-BN)-activation(-maxpool 2) blocks on (N, 1, size, size), then a Linear."""
    layers: list[nn.Module] = []
    c_in = 1
    for c in channels:
        layers.append(nn.Conv2d(c_in, c, 3, padding=1, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(c))
        layers.append(activation())
        if pool:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        c_in = c
    layers += [nn.Flatten(), nn.Linear(c_in * size * size, classes)]
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers)


class CharRNN(nn.Module):
    """Character language model: Embedding -> nn.RNN/LSTM/GRU -> Linear over the vocabulary."""

    def __init__(self, kind: str = "lstm", hidden: int = 128, layers: int = 1, **rnn_kw) -> None:
        super().__init__()
        cell = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.embed = nn.Embedding(len(VOCAB), 32)
        self.rnn = cell(32, hidden, num_layers=layers, batch_first=True, **rnn_kw)
        self.head = nn.Linear(hidden, len(VOCAB))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        out, _ = self.rnn(self.embed(ids))
        return self.head(out)


class CharTransformer(nn.Module):
    """Causal character model on ``nn.TransformerEncoder`` (pre-norm), optional final norm."""

    def __init__(
        self,
        width: int = 64,
        heads: int = 4,
        layers: int = 2,
        context: int = 64,
        final_norm: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), width)
        self.position = nn.Embedding(context, width)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width) if final_norm else nn.Identity()
        self.head = nn.Linear(width, len(VOCAB))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        t = ids.shape[1]
        h = self.embed(ids) + self.position(torch.arange(t, device=ids.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=ids.device)
        return self.head(self.norm(self.encoder(h, mask=mask, is_causal=True)))


def gpt2(context: int = 64, width: int = 64, layers: int = 2, heads: int = 4, **kw) -> nn.Module:
    """``transformers.GPT2LMHeadModel`` over the character vocabulary (tied head by default)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(VOCAB),
        n_positions=context,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        bos_token_id=0,
        eos_token_id=0,
        **kw,
    )
    return GPT2LMHeadModel(config)


def bert(context: int = 64, width: int = 64, layers: int = 2, heads: int = 4, **kw) -> nn.Module:
    """``transformers.BertForMaskedLM`` over the character vocabulary (+1 id: the mask)."""
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=len(VOCAB) + 1,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        max_position_embeddings=context,
        pad_token_id=0,
        **kw,
    )
    return BertForMaskedLM(config)


def vit(image_size: int = 16, patch: int = 4, width: int = 64, layers: int = 2, **kw) -> nn.Module:
    """``transformers.ViTForImageClassification`` for 1-channel digits, 10 classes."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=image_size,
        patch_size=patch,
        num_channels=1,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * width,
        num_labels=10,
        **kw,
    )
    return ViTForImageClassification(config)


def resnet(hidden: tuple[int, ...] = (16, 32), depths: tuple[int, ...] = (1, 1), **kw) -> nn.Module:
    """``transformers.ResNetForImageClassification`` (basic blocks) for 1-channel digits."""
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        num_channels=1,
        embedding_size=hidden[0],
        hidden_sizes=list(hidden),
        depths=list(depths),
        layer_type="basic",
        num_labels=10,
        **kw,
    )
    return ResNetForImageClassification(config)


def convnext(
    hidden: tuple[int, ...] = (16, 32), depths: tuple[int, ...] = (1, 1), **kw
) -> nn.Module:
    """``transformers.ConvNextForImageClassification`` for 1-channel digits (patch 2)."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(
        num_channels=1,
        patch_size=2,
        hidden_sizes=list(hidden),
        depths=list(depths),
        num_stages=len(hidden),
        num_labels=10,
        **kw,
    )
    return ConvNextForImageClassification(config)
