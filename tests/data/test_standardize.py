"""vs.data.Standardize against scikit-learn's StandardScaler (ddof=0) and float64 torch."""

import io

import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, TensorDataset

import vitalstats as vs


@pytest.fixture(scope="module")
def breast_cancer():
    features, labels = load_breast_cancer(return_X_y=True)
    return torch.from_numpy(features), torch.from_numpy(labels)


def test_matches_sklearn_standard_scaler_fitted_from_a_dataloader(breast_cancer):
    features, labels = breast_cancer
    loader = DataLoader(TensorDataset(features, labels), batch_size=64, shuffle=True)
    scaler = vs.data.Standardize().fit(loader)
    reference = StandardScaler().fit(features.numpy())
    torch.testing.assert_close(scaler.mean, torch.from_numpy(reference.mean_), rtol=1e-6, atol=0)
    torch.testing.assert_close(scaler.std, torch.from_numpy(reference.scale_), rtol=1e-6, atol=0)
    expected = torch.from_numpy(reference.transform(features.numpy()))
    torch.testing.assert_close(scaler(features), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(scaler.inverse(scaler(features)), features, rtol=1e-12, atol=1e-9)
    assert torch.all(scaler.count == features.shape[0])


def test_float32_features_statistics_within_1e_6_outputs_within_float32_resolution(breast_cancer):
    features = breast_cancer[0].float()
    scaler = vs.data.Standardize().fit(features.split(100))
    expected = torch.from_numpy(StandardScaler().fit_transform(features.double().numpy()))
    out = scaler(features)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        scaler.std,
        torch.from_numpy(StandardScaler().fit(features.double().numpy()).scale_),
        rtol=1e-6,
        atol=0,
    )


def test_per_channel_statistics_for_images():
    torch.manual_seed(0)
    images = (
        torch.randn(20, 3, 4, 4, dtype=torch.float64)
        * torch.tensor([1.0, 2.0, 5.0]).view(1, 3, 1, 1)
        + 10
    )
    scaler = vs.data.Standardize().fit(images.split(6))
    var, mean = torch.var_mean(images, dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(scaler.mean, mean, rtol=1e-13, atol=0)
    torch.testing.assert_close(scaler.std, var.sqrt(), rtol=1e-12, atol=0)
    z = scaler(images)
    torch.testing.assert_close(
        z.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0
    )


def test_channels_last_feature_dim():
    x = torch.randn(10, 5, 3, dtype=torch.float64)
    scaler = vs.data.Standardize(feature_dims=-1).fit(x)
    torch.testing.assert_close(scaler.std, x.std((0, 1), correction=0), rtol=1e-12, atol=0)


def test_partial_fit_equals_fit_and_state_dict_carries_the_statistics():
    x = torch.randn(50, 4, dtype=torch.float64) * 3 + 1
    fitted = vs.data.Standardize().fit(x)
    partial = vs.data.Standardize()
    for chunk in x.split(7):
        partial.partial_fit(chunk)
    torch.testing.assert_close(partial.std, fitted.std, rtol=1e-13, atol=0)

    buffer = io.BytesIO()
    torch.save(torch.nn.Sequential(fitted).state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.nn.Sequential(vs.data.Standardize())
    loaded.load_state_dict(torch.load(buffer))
    assert set(loaded.state_dict()) == {"0.count", "0.mean", "0.std"}
    torch.testing.assert_close(loaded(x), fitted(x), rtol=0, atol=0)

    more = torch.randn(30, 4, dtype=torch.float64)  # continue fitting after loading
    loaded[0].partial_fit(more)
    all_data = torch.cat([x, more])
    torch.testing.assert_close(loaded[0].std, all_data.std(0, correction=0), rtol=1e-12, atol=0)


def test_forward_before_fit_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"Standardize: not fitted; call fit\(data\)"):
        vs.data.Standardize()(torch.randn(3, 2))


def test_constant_feature_is_floored_with_a_warning_naming_it():
    x = torch.randn(20, 4, dtype=torch.float64)
    x[:, 2] = 7.0
    with pytest.warns(UserWarning, match=r"features \[2\] have std below min_std=1e-06"):
        scaler = vs.data.Standardize().fit(x)
    assert scaler.std[2] == 0.0
    z = scaler(x)
    assert torch.all(z[:, 2] == 0) and torch.isfinite(z).all()
    # on the fitting data a constant feature maps to 0, as with scikit-learn's scale of 1.0
    expected = torch.from_numpy(StandardScaler().fit_transform(x.numpy()))
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-12)


def test_the_divisor_is_floored_at_min_std():
    x = torch.randn(30, 2, dtype=torch.float64)
    x[:, 1] = 5.0 + 1e-9 * torch.randn(30, dtype=torch.float64)  # std ~1e-9 < min_std = 1e-6
    with pytest.warns(UserWarning, match=r"features \[1\]"):
        scaler = vs.data.Standardize().fit(x)
    torch.testing.assert_close(scaler(x)[:, 1], (x[:, 1] - x[:, 1].mean()) / 1e-6)
    torch.testing.assert_close(scaler.inverse(scaler(x)), x, rtol=1e-12, atol=1e-12)


def test_nonfinite_fitting_data_raises_with_count_and_first_index():
    x = torch.randn(10, 3)
    x[4, 1], x[8, 2] = float("nan"), float("inf")
    with pytest.raises(
        ValueError, match=r"2 NaN/Inf values.*index \(4, 1\).*sample 4.*nan_policy='omit'"
    ):
        vs.data.Standardize().fit(x)
    batches = [torch.randn(5, 3), x[5:]]
    scaler = vs.data.Standardize()
    with pytest.raises(ValueError, match=r"1 NaN/Inf values.*index \(3, 2\).*sample 8"):
        scaler.fit(batches)
    # not left half-fitted on the batches before the bad one
    assert not scaler.is_fitted and scaler.mean.numel() == 0
    with pytest.raises(RuntimeError, match="not fitted"):
        scaler(torch.randn(2, 3))


def test_nonfinite_values_are_omitted_on_request():
    x = torch.randn(10, 3, dtype=torch.float64)
    x[4, 1] = float("nan")
    scaler = vs.data.Standardize(nan_policy="omit").fit(x)
    kept = torch.cat([x[:4, 1], x[5:, 1]])
    torch.testing.assert_close(scaler.mean[1], kept.mean(), rtol=1e-13, atol=0)
    assert scaler.count.tolist() == [10, 9, 10]


def test_feature_count_change_names_expected_and_got():
    scaler = vs.data.Standardize()
    with pytest.raises(ValueError, match=r"expected \(3,\) features along dims \(1,\), got \(4,\)"):
        scaler.fit([torch.randn(5, 3), torch.randn(5, 4)])
    scaler.fit(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"expected \(3,\) features.*got \(2,\)"):
        scaler(torch.randn(5, 2))


def test_bad_arguments():
    with pytest.raises(ValueError, match="nan_policy='drop'"):
        vs.data.Standardize(nan_policy="drop")
    with pytest.raises(ValueError, match="min_std=0"):
        vs.data.Standardize(min_std=0)
    with pytest.raises(TypeError, match="got str"):
        vs.data.Standardize().fit(["abc"])
    with pytest.raises(ValueError, match=r"feature_dims=\(3,\).*shape \(4, 2\)"):
        vs.data.Standardize(feature_dims=3).fit(torch.randn(4, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fitting_continues_after_moving_the_module_to_cuda():
    x = torch.randn(40, 3, dtype=torch.float64)
    scaler = vs.data.Standardize().partial_fit(x[:20]).cuda()
    scaler.partial_fit(x[20:])
    assert scaler.std.device.type == "cuda"
    torch.testing.assert_close(scaler.std.cpu(), x.std(0, correction=0), rtol=1e-12, atol=0)
