"""The doctor's data: stratified split, standardised with training statistics only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn", reason="the doctor's data sets come with scikit-learn")

from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.preprocessing import StandardScaler

from vitalstats.doctor.data import load_split


def test_breast_cancer_matches_sklearn_standard_scaler_fit_on_train():
    split = load_split("breast_cancer", seed=3)
    assert split.x_train.shape == (455, 30) and split.x_test.shape == (114, 30)
    assert split.y_train.dtype == torch.float32 and split.y_train.shape == (455, 1)
    assert split.num_classes == 2
    # Oracle: undo nothing; recompute the same split's raw rows and scale them with sklearn.
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    raw_train, raw_test, _, _ = train_test_split(data.data, data.target, test_size=0.2,
                                                 random_state=3, stratify=data.target)  # fmt: skip
    scaler = StandardScaler().fit(raw_train)
    np.testing.assert_allclose(
        split.x_train.numpy(), scaler.transform(raw_train), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        split.x_test.numpy(), scaler.transform(raw_test), rtol=1e-5, atol=1e-5
    )


def test_split_is_stratified_and_seeded():
    first, again, other = (
        load_split("breast_cancer", 0),
        load_split("breast_cancer", 0),
        load_split("breast_cancer", 1),
    )
    assert torch.equal(first.x_train, again.x_train)
    assert not torch.equal(first.x_train, other.x_train)
    rate = load_breast_cancer().target.mean()
    assert abs(first.y_train.mean().item() - rate) < 0.01
    assert abs(first.y_test.mean().item() - rate) < 0.01


def test_digits_are_images_with_integer_labels():
    split = load_split("digits", seed=0)
    assert split.x_train.shape[1:] == (1, 8, 8)
    assert split.y_train.dtype == torch.int64 and split.num_classes == 10
    assert len(split.x_train) + len(split.x_test) == len(load_digits().target)
    assert torch.isfinite(split.x_train).all()  # constant border pixels: std 0 -> divided by 1
    per_pixel_std = split.x_train.flatten(1).std(dim=0, unbiased=False)
    assert torch.all(((per_pixel_std - 1).abs() < 1e-4) | (per_pixel_std == 0))


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        load_split("mnist")
