"""Histogram packing round-trips bit for bit against numpy/torch histograms; bad input is refused
with the argument, shape and fix in the message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalstats.store.codec import as_float, as_step, decode_histogram, encode_histogram


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=200),
    bins=st.integers(1, 64),
)
def test_numpy_histograms_round_trip_exactly(values, bins):
    counts, edges = np.histogram(np.asarray(values), bins=bins)  # oracle: numpy
    decoded_edges, decoded_counts = decode_histogram(*encode_histogram(edges, counts, "test"))
    assert decoded_edges.dtype == np.float64 and decoded_counts.dtype == np.int64
    np.testing.assert_array_equal(decoded_edges, edges)
    np.testing.assert_array_equal(decoded_counts, counts)
    assert decoded_counts.sum() == len(values)


def test_torch_histc_float32_round_trips_exactly_and_compactly():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    counts = torch.histc(x, bins=64, min=-4, max=4)  # float32 counts
    edges = torch.linspace(-4, 4, 65)  # float32 edges
    packed = encode_histogram(edges, counts, "test")
    assert packed[1] == "<f4" and packed[3] == "<f4"
    assert len(packed[0]) + len(packed[2]) == 4 * (65 + 64)  # 4 bytes a number
    decoded_edges, decoded_counts = decode_histogram(*packed)
    np.testing.assert_array_equal(decoded_edges, edges.double().numpy())
    np.testing.assert_array_equal(decoded_counts, counts.double().numpy())


def test_integer_and_half_precision_inputs_are_widened():
    edges = torch.tensor([0.0, 0.5, 1.0], dtype=torch.bfloat16)
    counts = torch.tensor([3, 4], dtype=torch.int32)
    decoded_edges, decoded_counts = decode_histogram(*encode_histogram(edges, counts, "t"))
    assert decoded_edges.tolist() == [0.0, 0.5, 1.0] and decoded_counts.tolist() == [3, 4]
    assert decoded_counts.dtype == np.int64


def test_infinite_outer_edges_are_allowed_for_overflow_bins():
    edges = [-np.inf, 0.0, np.inf]
    decoded_edges, _ = decode_histogram(*encode_histogram(edges, [1, 2], "t"))
    assert decoded_edges.tolist() == edges


@pytest.mark.parametrize(
    ("edges", "counts", "message"),
    [
        ([0.0], [], r"edges must be 1-D with at least 2 values.*got shape \(1,\)"),
        ([[0.0, 1.0]], [1], r"edges must be 1-D"),
        ([0.0, 1.0, 2.0], [1], r"counts must have shape \(2,\) = len\(edges\) - 1, got \(1,\)"),
        ([0.0, 2.0, 1.0], [1, 1], r"non-decreasing"),
        ([0.0, np.nan, 1.0], [1, 1], r"non-decreasing and not NaN"),
        ([0.0, 1.0], [-1], r"counts must be non-negative"),
        ([0.0, 1.0], [np.nan], r"counts must be non-negative and not NaN"),
    ],
)
def test_bad_histograms_are_refused(edges, counts, message):
    with pytest.raises(ValueError, match=message):
        encode_histogram(np.asarray(edges), np.asarray(counts), "add_histogram('l', 'm')")


def test_non_numeric_histograms_are_refused():
    with pytest.raises(TypeError, match="must be numeric"):
        encode_histogram(np.array(["a", "b"]), np.array([1]), "t")


def test_steps_accept_integers_of_every_kind_and_nothing_else():
    assert as_step(7, "t") == 7
    assert as_step(np.int64(7), "t") == 7
    assert as_step(torch.tensor(7), "t") == 7
    for bad in (True, 7.0, "7", torch.tensor(7.0), None):
        with pytest.raises(TypeError, match="step must be an int"):
            as_step(bad, "add_scalars")


def test_values_accept_numbers_and_one_element_tensors_exactly():
    assert as_float(0.1, "t") == 0.1
    assert as_float(np.float32(0.1), "t") == float(np.float32(0.1))
    assert as_float(torch.tensor([0.1]), "t") == float(np.float32(0.1))
    assert as_float(3, "t") == 3.0
    with pytest.raises(TypeError, match=r"got Tensor of shape \(2,\); reduce it first"):
        as_float(torch.zeros(2), "t")
    for bad in ("0.5", True, None, [1.0]):
        with pytest.raises(TypeError, match="value must be"):
            as_float(bad, "t")
