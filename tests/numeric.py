"""Comparing computed arrays across machines.

Float rounding grows with the magnitude of the values summed, and differs between CPUs (AVX2,
AVX-512, AMX), thread counts and process counts. An absolute tolerance such as ``atol=1e-6`` is
therefore a statement about one machine; these helpers compare the largest difference with the
largest magnitude instead, so a test checks the computation.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def relative_to_scale(actual: Any, expected: Any) -> float:
    """max |actual - expected| / max |expected| (0 when both are all zeros)."""
    a, e = _array(actual), _array(expected)
    assert a.shape == e.shape, f"shapes differ: {a.shape} and {e.shape}"
    scale = float(np.abs(e).max(initial=0.0))
    diff = float(np.abs(a - e).max(initial=0.0))
    return diff / scale if scale > 0 else diff


def assert_close_to_scale(actual: Any, expected: Any, rtol: float, what: str = "") -> None:
    """The largest difference is at most ``rtol`` times the largest magnitude of ``expected``."""
    error = relative_to_scale(actual, expected)
    assert error <= rtol, f"{what or 'arrays'} differ by {error:.3g} of their scale (> {rtol:g})"
