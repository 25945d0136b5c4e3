"""vs.data.MinMaxScale against scikit-learn's MinMaxScaler."""

import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import MinMaxScaler
from torch.utils.data import DataLoader, TensorDataset

import vitalstats as vs


@pytest.mark.parametrize("feature_range", [(0.0, 1.0), (-1.0, 3.0)])
def test_matches_sklearn_min_max_scaler_on_breast_cancer(feature_range):
    features, labels = (torch.from_numpy(a) for a in load_breast_cancer(return_X_y=True))
    loader = DataLoader(TensorDataset(features, labels), batch_size=50)
    scaler = vs.data.MinMaxScale(feature_range).fit(loader)
    reference = MinMaxScaler(feature_range=feature_range).fit(features.numpy())
    torch.testing.assert_close(
        scaler.data_min, torch.from_numpy(reference.data_min_), rtol=0, atol=0
    )
    torch.testing.assert_close(
        scaler.data_max, torch.from_numpy(reference.data_max_), rtol=0, atol=0
    )
    expected = torch.from_numpy(reference.transform(features.numpy()))
    torch.testing.assert_close(scaler(features), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(scaler.inverse(scaler(features)), features, rtol=1e-12, atol=1e-9)
    float_out = scaler(features.float())
    assert float_out.dtype == torch.float32
    torch.testing.assert_close(float_out.double(), expected, rtol=0, atol=1e-5)


def test_state_dict_and_continued_fitting():
    x = torch.randn(40, 3, dtype=torch.float64)
    scaler = vs.data.MinMaxScale().fit(x[:20])
    loaded = vs.data.MinMaxScale()
    loaded.load_state_dict(scaler.state_dict())
    torch.testing.assert_close(loaded(x), scaler(x), rtol=0, atol=0)
    loaded.partial_fit(x[20:])
    assert torch.equal(loaded.data_min, x.amin(0)) and torch.equal(loaded.data_max, x.amax(0))
    assert loaded.count.tolist() == [40, 40, 40]


def test_constant_feature_warns_and_nonfinite_policy():
    x = torch.rand(10, 3, dtype=torch.float64)
    x[:, 0] = 2.0
    with pytest.warns(UserWarning, match=r"MinMaxScale: features \[0\] have a range below"):
        scaler = vs.data.MinMaxScale().fit(x)
    assert torch.all(scaler(x)[:, 0] == 0.0)
    x[3, 2] = float("-inf")
    with pytest.raises(ValueError, match=r"1 NaN/Inf values.*index \(3, 1\)"):
        vs.data.MinMaxScale().fit(x[:, 1:])
    omitted = vs.data.MinMaxScale(nan_policy="omit").fit(x[:, 1:])
    finite = torch.cat([x[:3, 2], x[4:, 2]])
    assert omitted.data_min[1] == finite.min() and omitted.data_max[1] == finite.max()


def test_errors():
    with pytest.raises(RuntimeError, match="MinMaxScale: not fitted"):
        vs.data.MinMaxScale()(torch.randn(2, 2))
    with pytest.raises(ValueError, match=r"feature_range=\(1, 0\)"):
        vs.data.MinMaxScale((1, 0))
