"""``standard_scale`` and ``min_max_scale``: rescaling with statistics stored with the definition.

``standard_scale(values, mean, std)``
    ``(v - mean) / std`` for each value, with ``mean`` and ``std`` finite Python/numpy numbers
    computed once (offline) and stored with the feature definition, never recomputed from the rows
    at hand (that would make a row's value depend on its batch).  ``std == 0`` (a constant
    feature) gives ``0.0`` for every value that is not NaN -- including +-inf -- and NaN stays NaN.
    ``std < 0`` or a non-finite statistic raises ValueError.

``min_max_scale(values, lo, hi, clip=False)``
    ``(v - lo) / (hi - lo)``, so ``lo -> 0`` and ``hi -> 1``; values outside ``[lo, hi]`` go
    outside ``[0, 1]`` unless ``clip=True``, which clamps the result into ``[0, 1]`` (NaN stays
    NaN, +-inf become 1 and 0).  ``hi == lo`` gives ``0.0`` for every value that is not NaN.
    ``hi < lo`` or non-finite bounds raise ValueError.

Dtype rules (both): a float32 input gives float32, computed in float64 from the exactly widened
float32 values and rounded to float32 once at the end; every other numeric input (float64,
integers, bool) is converted to float64 (exact up to 2**53) and gives float64.  NaN in gives NaN
out; +-inf in gives +-inf out (``standard_scale`` with std > 0, ``min_max_scale`` unclipped with
``hi > lo``).  One subtraction and one division per value, in that order, no fused
multiply-add, so every path produces the same bits.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from parity.kernels._common import as_float64, as_numeric, finite_scalar, result_dtype, to_float32


@njit(cache=True, nogil=True)
def _affine(values, shift, scale, clip01, out):
    """out[i] = (values[i] - shift) / scale, or 0.0 (NaN kept) when scale == 0."""
    for i in range(values.shape[0]):
        v = values[i]
        if np.isnan(v):
            out[i] = v
        elif scale == 0.0:
            out[i] = 0.0
        else:
            r = (v - shift) / scale
            if clip01:
                if r < 0.0:
                    r = 0.0
                elif r > 1.0:
                    r = 1.0
            out[i] = r


def _run(values, shift: float, scale: float, clip01: bool, kernel: str) -> np.ndarray:
    arr = as_numeric(values, kernel)
    want = result_dtype(arr)
    x = as_float64(arr, kernel)
    out = np.empty(x.shape[0], dtype=np.float64)
    _affine(x, shift, scale, clip01, out)
    return out if want == np.float64 else to_float32(out)


def standard_scale(values, mean, std) -> np.ndarray:
    """``(v - mean) / std`` with stored statistics; std == 0 -> 0.0 (NaN kept)."""
    m = finite_scalar(mean, "standard_scale", "mean")
    s = finite_scalar(std, "standard_scale", "std")
    if s < 0:
        raise ValueError(f"standard_scale: std must be >= 0, got {s}")
    return _run(values, m, s, False, "standard_scale")


def min_max_scale(values, lo, hi, clip: bool = False) -> np.ndarray:
    """``(v - lo) / (hi - lo)``; hi == lo -> 0.0 (NaN kept); clip=True clamps into [0, 1]."""
    a = finite_scalar(lo, "min_max_scale", "lo")
    b = finite_scalar(hi, "min_max_scale", "hi")
    if b < a:
        raise ValueError(f"min_max_scale: hi must be >= lo, got lo={a}, hi={b}")
    rng = b - a
    if not np.isfinite(rng):
        raise ValueError(f"min_max_scale: hi - lo overflows float64 (lo={a}, hi={b})")
    return _run(values, a, rng, bool(clip), "min_max_scale")
