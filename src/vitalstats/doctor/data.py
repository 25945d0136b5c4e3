"""The doctor's data: two small real data sets bundled with scikit-learn (no download).

- ``breast_cancer``: 569 tumours x 30 measurements, benign/malignant (the seeds' clinical MLP).
- ``digits``: 1797 handwritten digits as 8x8 grey images (values 0..16), 10 classes.

Features are standardised with the mean and population std of the *training* split only,
z = (x - mean_train) / std_train, so no statistic of the test split leaks into training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

DatasetName = Literal["breast_cancer", "digits"]


@dataclass(frozen=True)
class Split:
    """A standardised train/test split as float32 tensors on the CPU.

    ``x_*`` has shape (N, features) for tabular data or (N, 1, 8, 8) for images; ``y_*`` is
    float32 (N, 1) for a binary target and int64 (N,) for a multi-class target.
    """

    name: DatasetName
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def num_features(self) -> int:
        return int(self.x_train[0].numel())


def _require_sklearn():  # -> module
    try:
        import sklearn.datasets
        import sklearn.model_selection
    except ImportError as error:  # pragma: no cover - sklearn is in the dev extra
        raise ImportError(
            "vitalstats doctor needs scikit-learn for its bundled data sets; "
            "install it with: pip install 'vitalstats[data]'"
        ) from error
    return sklearn


def load_split(name: DatasetName, seed: int = 0, test_fraction: float = 0.2) -> Split:
    """Load ``name``, split it stratified by class (``seed`` fixes the split), standardise."""
    sklearn = _require_sklearn()
    if name == "breast_cancer":
        bunch = sklearn.datasets.load_breast_cancer()
    elif name == "digits":
        bunch = sklearn.datasets.load_digits()
    else:
        raise ValueError(f"unknown data set {name!r}; expected 'breast_cancer' or 'digits'")
    x_train, x_test, y_train, y_test = sklearn.model_selection.train_test_split(
        bunch.data, bunch.target, test_size=test_fraction, random_state=seed, stratify=bunch.target
    )
    x_train = torch.as_tensor(x_train, dtype=torch.float64)
    x_test = torch.as_tensor(x_test, dtype=torch.float64)
    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant pixels at the digit borders
    x_train = ((x_train - mean) / std).float()
    x_test = ((x_test - mean) / std).float()
    num_classes = int(bunch.target.max()) + 1
    if name == "digits":
        x_train = x_train.reshape(-1, 1, 8, 8)
        x_test = x_test.reshape(-1, 1, 8, 8)
        targets = torch.as_tensor(y_train, dtype=torch.int64), torch.as_tensor(y_test)
    else:
        targets = (
            torch.as_tensor(y_train, dtype=torch.float32).reshape(-1, 1),
            torch.as_tensor(y_test, dtype=torch.float32).reshape(-1, 1),
        )
    return Split(name, x_train, targets[0], x_test, targets[1].to(targets[0].dtype), num_classes)
