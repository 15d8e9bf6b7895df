"""``clip(values, lo, hi)``: clamp each value into ``[lo, hi]``, keeping the input's dtype.

Semantics
---------
``v < lo -> lo``, ``v > hi -> hi``, otherwise ``v`` unchanged (so ``-0.0`` stays ``-0.0`` even
when ``lo == 0.0``).  ``NaN`` stays ``NaN``; ``-inf``/``+inf`` become ``lo``/``hi`` when that bound
is given.  A bound of ``None`` means no bound on that side.  ``lo > hi`` raises ValueError.

Dtypes: the result has the input's dtype (bool is not accepted; clip a bool makes no sense).
For a floating input the bounds are converted to that dtype first (nearest float32 for a float32
input) and must not be NaN.  For an integer input the bounds must be whole numbers; a bound beyond
the dtype's range is the same as no bound on that side (nothing can cross it).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from parity.kernels._common import as_numeric


@njit(cache=True, nogil=True)
def _clip(values, lo, hi, has_lo, has_hi, out):
    for i in range(values.shape[0]):
        v = values[i]
        if has_lo and v < lo:
            v = lo
        elif has_hi and v > hi:
            v = hi
        out[i] = v


def _bound(x, dtype: np.dtype, name: str):
    """(has_bound, bound as `dtype`) for one side."""
    if x is None:
        return False, dtype.type(0)
    try:
        f = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"clip: {name} must be a number or None, not {type(x).__name__}") from None
    if math.isnan(f):
        raise ValueError(f"clip: {name} must not be NaN")
    if dtype.kind == "f":
        if dtype == np.float32 and abs(f) > 3.4028234663852886e38:
            with np.errstate(over="ignore"):  # 1e300 as float32 is +inf: still a bound
                return True, dtype.type(f)
        return True, dtype.type(f)
    info = np.iinfo(dtype)
    if math.isinf(f):
        return False, dtype.type(0)
    if isinstance(x, (float, np.floating)) and not f.is_integer():
        raise ValueError(f"clip: {name}={x!r} is not a whole number; the values are {dtype}")
    n = int(x)
    if n < info.min or n > info.max:
        return False, dtype.type(0)  # nothing is beyond it
    return True, dtype.type(n)


def clip(values, lo=None, hi=None) -> np.ndarray:
    """Clamp each value into [lo, hi] (None: unbounded on that side); dtype kept, NaN kept."""
    arr = as_numeric(values, "clip")
    if arr.dtype.kind == "b":
        raise TypeError("clip: values must be integer or float, not bool")
    if lo is not None and hi is not None and float(lo) > float(hi):
        raise ValueError(f"clip: lo must be <= hi, got lo={lo}, hi={hi}")
    has_lo, lo_v = _bound(lo, arr.dtype, "lo")
    has_hi, hi_v = _bound(hi, arr.dtype, "hi")
    if has_lo and has_hi and lo_v > hi_v:
        raise ValueError(f"clip: lo must be <= hi, got lo={lo}, hi={hi}")
    # a bound beyond the range on the wrong side (e.g. lo > int max) clips everything
    if arr.dtype.kind in "iu":
        info = np.iinfo(arr.dtype)
        if lo is not None and not has_lo and float(lo) > 0:
            has_lo, lo_v = True, arr.dtype.type(info.max)
        if hi is not None and not has_hi and float(hi) < 0:
            has_hi, hi_v = True, arr.dtype.type(info.min)
    out = np.empty(arr.shape[0], dtype=arr.dtype)
    _clip(arr, lo_v, hi_v, has_lo, has_hi, out)
    return out
