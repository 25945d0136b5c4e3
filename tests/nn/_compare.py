"""Tolerances per dtype for comparing vitalstats.nn with torch.nn, stated once.

float64 results must agree to rounding; float32 to a few ulps of the output's scale times the
reduction length's effect; float16/bfloat16 (statistics in float32 on both sides, output
rounded to the input dtype) to one or two units in the last place of the format.
"""

from __future__ import annotations

import torch

# (rtol, atol relative to max(1, |expected|.max()))
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 2e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 3e-2),
}


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str
) -> None:
    """torch.testing.assert_close with this dtype's tolerances, atol scaled by |expected|."""
    rtol, atol = TOLERANCES[dtype]
    scale = max(1.0, float(expected.detach().double().abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.detach().double(), expected.detach().double(), rtol=rtol, atol=atol * scale,
        msg=lambda m: f"{what} ({dtype}): {m}",
    )  # fmt: skip


def assert_matches_torch_or_is_more_accurate(
    ours: torch.Tensor, theirs: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype, what: str
) -> None:
    """ours == torch's within this dtype's tolerances, or else ours no less accurate than torch's
    against a float64 reference on the same (rounded) input, up to the same tolerance.

    The fallback is for ill-conditioned batches (|mean| >> std, float32) and for float16/
    bfloat16, where torch's CPU kernels round some intermediates to the input dtype: there the
    two legitimately differ and the float64 answer decides. float64 must match torch."""
    if dtype == torch.float64:
        assert_close(ours, theirs, dtype, what)
        return
    try:
        assert_close(ours, theirs, dtype, what)
        return
    except AssertionError:
        pass
    _, atol = TOLERANCES[dtype]
    ref = reference.detach().double()
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    error_ours = float((ours.detach().double() - ref).abs().max()) if ref.numel() else 0.0
    error_torch = float((theirs.detach().double() - ref).abs().max()) if ref.numel() else 0.0
    assert error_ours <= error_torch + atol * scale, (
        f"{what} ({dtype}): max error vs float64 {error_ours:.3g}, torch's {error_torch:.3g}, "
        f"allowed slack {atol * scale:.3g}"
    )
