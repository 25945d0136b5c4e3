"""vs.stats.Moments against float64 torch oracles (torch.var_mean / amin / amax on x.double())."""

import io
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vitalstats as vs
from vitalstats.stats import batch as batch_module


def oracle(x: torch.Tensor, dims):
    """Float64 count, mean, population var, min, max of the finite values of x over dims."""
    x64 = x.detach().to(torch.float64)
    var, mean = torch.var_mean(x64, dim=dims, correction=0)
    return mean, var, x64.amin(dims), x64.amax(dims)


@pytest.mark.parametrize(
    ("shape", "dims"),
    [((50,), None), ((40, 6), 0), ((8, 3, 5, 4), (0, 2, 3)), ((7, 5, 3), -1), ((6, 4), (0, 1))],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_float64_oracle_for_each_layout(shape, dims, dtype):
    torch.manual_seed(0)
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 5).to(dtype)
    m = vs.stats.Moments(dims).update(x)
    mean, var, low, high = oracle(x, dims)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(m.mean, mean, rtol=tol, atol=0)
    torch.testing.assert_close(m.var(), var, rtol=tol, atol=0)
    torch.testing.assert_close(m.std(), var.sqrt(), rtol=tol, atol=0)
    assert torch.equal(m.min, low) and torch.equal(m.max, high)  # exact: min/max are values
    assert m.mean.dtype == torch.float64 and m.count.dtype == torch.int64
    assert torch.all(m.count == x.numel() // m.mean.numel())


def test_unbiased_variance_matches_torch_bessel_correction():
    x = torch.randn(9, 4, dtype=torch.float64)
    m = vs.stats.Moments(0).update(x[:5]).update(x[5:])
    torch.testing.assert_close(m.var(unbiased=True), x.var(0, correction=1), rtol=1e-13, atol=0)
    torch.testing.assert_close(m.std(unbiased=True), x.std(0, correction=1), rtol=1e-13, atol=0)


def test_unbiased_variance_of_a_single_value_is_nan_like_torch():
    m = vs.stats.Moments().update(torch.tensor([3.0]))
    assert torch.isnan(m.var(unbiased=True)) and m.var() == 0


def test_issue_accuracy_bar_float32_far_from_zero_in_100_batches():
    """1e4 + 1e-2 * randn(10**6) in float32: within 1e-6 of the float64 variance; naive is not."""
    torch.manual_seed(0)
    x = (1e4 + 1e-2 * torch.randn(10**6, dtype=torch.float64)).to(torch.float32)
    reference = x.to(torch.float64).var(correction=0)
    m = vs.stats.Moments()
    total = torch.zeros((), dtype=torch.float32)
    total_sq = torch.zeros((), dtype=torch.float32)
    for chunk in x.chunk(100):
        m.update(chunk)
        total += chunk.sum()
        total_sq += (chunk * chunk).sum()
    naive = (total_sq / x.numel() - (total / x.numel()) ** 2).to(torch.float64)
    assert abs(m.var() - reference) / reference < 1e-6
    assert abs(naive - reference) / reference > 0.10
    # per-batch float32 var_mean + Chan's merge is not enough either: its mean is rounded
    merged = (torch.tensor(0), torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.0).double())
    for chunk in x.chunk(100):
        var, mean = torch.var_mean(chunk, correction=0)
        n = torch.tensor(chunk.numel())
        merged = vs.stats.chan_merge(*merged, n, mean.double(), var.double() * chunk.numel())
    assert abs(merged[2] / merged[0] - reference) / reference > 1e-5
    torch.testing.assert_close(m.mean, x.to(torch.float64).mean(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_is_accumulated_in_float32(dtype):
    torch.manual_seed(1)
    x = (torch.randn(64, 8) * 2 + 100).to(dtype)  # half's mean has only 3 significant digits
    m = vs.stats.Moments(0)
    for chunk in x.split(10):
        m.update(chunk)
    mean, var, low, high = oracle(x, 0)
    torch.testing.assert_close(m.mean, mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(m.var(), var, rtol=1e-5, atol=0)
    assert torch.equal(m.min, low) and torch.equal(m.max, high)


def test_integer_input_is_exact():
    x = torch.arange(-50, 51).reshape(101, 1)
    m = vs.stats.Moments(0).update(x)
    assert m.mean.item() == 0.0 and m.var().item() == pytest.approx(850.0, rel=1e-15)


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 200), max_size=8),
    offset=st.sampled_from([0.0, 1e3, -1e6]),
)
def test_result_does_not_depend_on_batch_split(cuts, offset):
    torch.manual_seed(2)
    x = torch.randn(200, 3, dtype=torch.float64) * 0.5 + offset
    bounds = [0, *sorted(cuts), 200]
    m = vs.stats.Moments(0)
    for start, stop in itertools.pairwise(bounds):
        m.update(x[start:stop])  # includes empty batches
    mean, var, low, high = oracle(x, 0)
    torch.testing.assert_close(m.mean, mean, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(m.var(), var, rtol=1e-9, atol=0)  # offset/std = 2e6 in float64
    assert torch.equal(m.min, low) and torch.equal(m.max, high) and torch.all(m.count == 200)


@pytest.mark.parametrize("batch_size", [2, 4, 8, 16, 32, 64])
def test_resplitting_float32_data_gives_the_same_statistics(batch_size):
    """fvcore's PreciseBN habit: the same data in batches of 2..64 gives the same answer."""
    torch.manual_seed(3)
    x = torch.randn(128, 4, 3, 3) * 2 + 7
    m = vs.stats.Moments((0, 2, 3))
    for chunk in x.split(batch_size):
        m.update(chunk)
    mean, var, _, _ = oracle(x, (0, 2, 3))
    torch.testing.assert_close(m.mean, mean, rtol=1e-7, atol=0)
    torch.testing.assert_close(m.var(), var, rtol=1e-6, atol=0)


def test_merge_is_associative_and_matches_pooled_data():
    torch.manual_seed(4)
    parts = [
        torch.randn(n, 5, dtype=torch.float64) + shift for n, shift in [(3, 0), (40, 9), (7, -4)]
    ]
    a, b, c = (vs.stats.Moments(0).update(p) for p in parts)
    left = vs.stats.Moments.from_state_dict(a.state_dict()).merge(b).merge(c)
    right = vs.stats.Moments.from_state_dict(b.state_dict()).merge(c)
    right = vs.stats.Moments.from_state_dict(a.state_dict()).merge(right)
    mean, var, low, high = oracle(torch.cat(parts), 0)
    for m in (left, right):
        torch.testing.assert_close(m.mean, mean, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(m.var(), var, rtol=1e-13, atol=0)
        assert torch.equal(m.min, low) and torch.equal(m.max, high)
    torch.testing.assert_close(left.var(), right.var(), rtol=1e-14, atol=0)


def test_merge_with_empty_moments_on_either_side():
    x = torch.randn(10, 2)
    full = vs.stats.Moments(0).update(x)
    assert torch.equal(vs.stats.Moments(0).merge(full).mean, full.mean)
    before = full.mean.clone()
    assert torch.equal(full.merge(vs.stats.Moments(0)).mean, before)


def test_empty_batch_is_a_no_op_but_fixes_the_shape():
    m = vs.stats.Moments((0, 2)).update(torch.empty(0, 3, 4))
    assert m.count.tolist() == [0, 0, 0] and torch.all(m.min == float("inf"))
    x = torch.randn(5, 3, 4)
    m.update(x).update(torch.empty(0, 3, 4))
    mean, var, _, _ = oracle(x, (0, 2))
    torch.testing.assert_close(m.mean, mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(m.var(), var, rtol=1e-6, atol=0)


def test_nonfinite_values_are_counted_and_excluded_by_default():
    x = torch.randn(20, 3)
    x[0, 0], x[5, 0], x[7, 2] = float("nan"), float("inf"), float("-inf")
    m = vs.stats.Moments(0).update(x[:10]).update(x[10:])
    assert m.exclude_nonfinite
    assert m.nonfinite.tolist() == [2, 0, 1] and m.count.tolist() == [18, 20, 19]
    for column in range(3):
        values = x[:, column][torch.isfinite(x[:, column])].to(torch.float64)
        torch.testing.assert_close(m.mean[column], values.mean(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(m.var()[column], values.var(correction=0), rtol=1e-6, atol=0)
        assert m.min[column] == values.min() and m.max[column] == values.max()


def test_nonfinite_values_propagate_when_not_excluded():
    x = torch.randn(6, 2)
    x[1, 0] = float("nan")
    m = vs.stats.Moments(0, exclude_nonfinite=False).update(x)
    assert not m.exclude_nonfinite
    assert m.nonfinite.tolist() == [1, 0] and m.count.tolist() == [6, 6]
    assert torch.isnan(m.mean[0]) and torch.isnan(m.var()[0]) and torch.isnan(m.max[0])
    torch.testing.assert_close(m.var()[1], x[:, 1].double().var(correction=0), rtol=1e-6, atol=0)


def test_a_statistic_with_only_nonfinite_values_is_empty():
    x = torch.full((4, 2), float("nan"))
    x[:, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    m = vs.stats.Moments(0).update(x)
    assert m.count.tolist() == [0, 4] and torch.isnan(m.var()[0])
    assert m.min[0] == float("inf") and m.max[0] == float("-inf") and m.var()[1] == 1.25


def test_blocked_paths_give_the_same_statistics(monkeypatch):
    """Tiny blocks exercise the block + remainder summation used for long runs of values."""
    monkeypatch.setattr(batch_module, "_BLOCK", 8)
    x = torch.randn(45, 3, 5, dtype=torch.float64) + 2
    x[:30:7, 1, 2] = float("nan")
    for dims in [(0,), (0, 2), (1, 2), None]:
        m = vs.stats.Moments(dims).update(x)
        keep = torch.isfinite(x)
        reduce = dims if dims is not None else (0, 1, 2)
        count = keep.sum(reduce)
        mean = torch.where(keep, x, 0).sum(reduce) / count
        var = (
            torch.where(
                keep,
                (x - mean.reshape([1 if d in reduce else s for d, s in enumerate(x.shape)])) ** 2,
                0,
            ).sum(reduce)
            / count
        )
        assert torch.equal(m.count, count) and torch.equal(m.nonfinite, (~keep).sum(reduce))
        torch.testing.assert_close(m.mean, mean, rtol=1e-13, atol=0)
        torch.testing.assert_close(m.var(), var, rtol=1e-12, atol=0)


def test_elementwise_statistics_with_empty_dims():
    xs = torch.randn(5, 2, 3, dtype=torch.float64)
    m = vs.stats.Moments(())
    for x in xs:
        m.update(x)
    torch.testing.assert_close(m.var(), xs.var(0, correction=0), rtol=1e-13, atol=0)
    assert m.mean.shape == (2, 3)


def test_update_never_reads_values_on_the_host(monkeypatch):
    """No .item()/.tolist()/bool()/float() in update or merge: they would sync a GPU stream."""
    x = torch.randn(16, 3, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    m, other = vs.stats.Moments((0, 2, 3)), vs.stats.Moments((0, 2, 3)).update(x)

    def forbidden(*args, **kwargs):
        raise AssertionError("host read inside Moments.update")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    m.update(x).update(x.half()).merge(other)
    monkeypatch.undo()
    assert m.count.tolist() == [3 * 16 * 16 - 3, 3 * 16 * 16, 3 * 16 * 16]


def test_non_contiguous_input_gives_the_same_statistics():
    torch.manual_seed(6)
    x = torch.randn(6, 5, 4, 3, dtype=torch.float64) + 3
    reference = vs.stats.Moments((0, 2, 3)).update(x)
    channels_last = vs.stats.Moments((0, 2, 3)).update(x.to(memory_format=torch.channels_last))
    transposed = vs.stats.Moments((1, 2, 3)).update(x.transpose(0, 1))
    for m in (channels_last, transposed):
        torch.testing.assert_close(m.mean, reference.mean, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(m.var(), reference.var(), rtol=1e-13, atol=0)


def test_input_requiring_grad_is_detached():
    x = torch.randn(4, 2, requires_grad=True)
    m = vs.stats.Moments(0).update(x * 2)
    assert not m.mean.requires_grad


def test_state_dict_round_trip_through_torch_save():
    m = vs.stats.Moments((0, 2), exclude_nonfinite=False).update(torch.randn(4, 3, 2))
    buffer = io.BytesIO()
    torch.save(m.state_dict(), buffer)
    buffer.seek(0)
    loaded = vs.stats.Moments.from_state_dict(torch.load(buffer))
    assert loaded.dims == (0, 2) and not loaded.exclude_nonfinite
    for key in ("count", "mean", "min", "max", "nonfinite"):
        assert torch.equal(getattr(loaded, key), getattr(m, key))
    assert torch.equal(loaded.var(), m.var())
    x = torch.randn(4, 3, 2)
    torch.testing.assert_close(loaded.update(x).mean, m.update(x).mean, rtol=0, atol=0)


def test_state_dict_of_an_empty_moments_round_trips():
    loaded = vs.stats.Moments.from_state_dict(vs.stats.Moments(1).state_dict())
    with pytest.raises(RuntimeError, match="no data yet"):
        loaded.mean


def test_errors_name_the_problem_and_the_fix():
    m = vs.stats.Moments((0, 2, 3)).update(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"statistic shape \(5,\).*running shape \(3,\)"):
        m.update(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match=r"3-d tensor.*expected 4-d"):
        m.update(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"dims out of range.*shape \(2, 3\)"):
        vs.stats.Moments((0, 2, 3)).update(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match=r"Moments.var.*no data yet.*update\(x\)"):
        vs.stats.Moments(0).var()
    with pytest.raises(ValueError, match="dims/exclude_nonfinite differ"):
        m.merge(vs.stats.Moments(0).update(torch.randn(3)))
    with pytest.raises(TypeError, match=r"expects a torch\.Tensor, got list"):
        m.update([1.0, 2.0])
    with pytest.raises(ValueError, match="version 99 is not supported"):
        vs.stats.Moments.from_state_dict({**m.state_dict(), "version": 99})
    with pytest.raises(TypeError, match="complex"):
        vs.stats.Moments().update(torch.randn(3, dtype=torch.complex64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_update_stays_on_device_without_sync():
    x = (1e4 + 1e-2 * torch.randn(10**6, device="cuda")).float()
    m = vs.stats.Moments()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for chunk in x.chunk(100):
            m.update(chunk)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    reference = x.double().var(correction=0)
    assert m.mean.device.type == "cuda"
    assert abs(m.var() - reference) / reference < 1e-6
    with pytest.raises(ValueError, match="move the input"):
        m.update(torch.randn(3))


def test_dims_of_the_wrong_type_are_refused_at_construction():
    assert vs.stats.Moments(range(2)).dims == (0, 1)
    for dims in ("0", 1.5, [0, "x"]):
        with pytest.raises(TypeError, match=r"dims=.*expected the reduced dimensions as an int"):
            vs.stats.Moments(dims)
