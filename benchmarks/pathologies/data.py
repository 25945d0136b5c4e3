"""Data the benchmark trains on: small real data sets that installed packages ship.

- ``digits``: scikit-learn's 1797 handwritten 8x8 digits (values 0..16), 10 classes.
- ``breast_cancer``: scikit-learn's 569 tumours x 30 measurements (raw values up to ~4250).
- ``wine``: scikit-learn's 178 wines x 13 measurements (proline up to 1680), 3 classes.
- ``char_text``: characters of Python's own standard-library sources (a fixed list of files
  read from ``sysconfig.get_paths()["stdlib"]``), encoded over printable ASCII.

Standardised features are z = (x - mean) / std with the population std of the whole set (the
benchmark measures training health, not generalisation). Every batch is a pure function of
(seed, step), so two instances of a case see identical data. No network.
"""

from __future__ import annotations

import functools
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F

TEXT_FILES = (
    "textwrap.py",
    "heapq.py",
    "bisect.py",
    "fractions.py",
    "statistics.py",
    "string.py",
    "random.py",
    "shlex.py",
    "difflib.py",
    "calendar.py",
)
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))  # 96 symbols; anything else -> " "


def _standardise(x: torch.Tensor) -> torch.Tensor:
    mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False)
    return ((x - mean) / torch.where(std > 0, std, torch.ones_like(std))).float()


@functools.cache
def _sklearn(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{name}")()
    x = torch.as_tensor(bunch.data, dtype=torch.float64)
    return x, torch.as_tensor(bunch.target, dtype=torch.int64)


def tabular(name: str, standardise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F) float32, class labels (N,) int64) of ``breast_cancer`` or ``wine``."""
    x, y = _sklearn(name)
    return (_standardise(x) if standardise else x.float()), y


def digits(size: int = 8, standardise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Digit images (N, 1, size, size) float32 (bilinear upsampling from 8x8) and labels (N,).

    Standardised: pixel / 16 then z-scored with the global pixel mean and std; raw: 0..16."""
    x, y = _sklearn("digits")
    images = x.float().reshape(-1, 1, 8, 8)
    if standardise:
        images = images / 16.0
        images = (images - images.mean()) / images.std()
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images, y


@functools.cache
def char_text(max_chars: int = 400_000) -> torch.Tensor:
    """Character ids (int64, values < len(VOCAB)) of the stdlib files in ``TEXT_FILES``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    names = [n for n in TEXT_FILES if (root / n).is_file()]
    if len(names) < 3:  # an unusual Python layout: any stdlib sources, in a fixed order
        names = sorted(p.name for p in root.glob("*.py"))[:10]
    text = "".join((root / n).read_text(encoding="utf-8", errors="replace") for n in names)
    index = {c: i for i, c in enumerate(VOCAB)}
    space = index[" "]
    return torch.tensor([index.get(c, space) for c in text[:max_chars]], dtype=torch.int64)


class Batches:
    """Batch ``step`` of ``tensors`` (same first dim): epoch-wise shuffling, fixed by seed."""

    def __init__(self, *tensors: torch.Tensor, batch_size: int, seed: int = 0) -> None:
        self.tensors, self.batch_size, self.seed = tensors, batch_size, seed
        self.n = int(tensors[0].shape[0])
        self.per_epoch = max(self.n // batch_size, 1)
        self._epoch, self._order = -1, torch.arange(self.n)

    def __call__(self, step: int) -> tuple[torch.Tensor, ...]:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.n, generator=g)
        idx = self._order[k * self.batch_size : (k + 1) * self.batch_size]
        return tuple(t[idx] for t in self.tensors)


class CharWindows:
    """Batch ``step`` of (input, target) windows of ``length`` characters from ``char_text``."""

    def __init__(self, batch_size: int, length: int, seed: int = 0) -> None:
        self.text = char_text()
        self.batch_size, self.length, self.seed = batch_size, length, seed

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 7919 + step)
        starts = torch.randint(
            0, self.text.numel() - self.length - 1, (self.batch_size,), generator=g
        )
        offsets = torch.arange(self.length + 1)
        chunk = self.text[starts[:, None] + offsets]  # (B, length + 1)
        return chunk[:, :-1], chunk[:, 1:]
