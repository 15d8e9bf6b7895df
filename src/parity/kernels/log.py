"""``log1p(values, negative="signed")``: ``log(1 + v)``, with a stated rule for negative values.

Semantics
---------
``negative="signed"`` (the default) is the sign-preserving ("symmetric") log:
``sign(v) * log1p(|v|)``.  It is odd (``f(-v) == -f(v)`` bit for bit), monotonic, defined for
every real value, ``f(+-0.0) == +-0.0``, ``f(+-inf) == +-inf``; for ``v >= 0`` it equals the
ordinary ``log1p(v)``.

``negative="nan"``: ``log1p(v)`` for ``v >= 0`` (including ``-0.0``, which gives ``-0.0``), ``NaN``
for every ``v < 0`` (including ``-inf``) -- use it when a negative value is a data error to be
seen, not compressed.

``NaN`` in gives ``NaN`` out in both modes.

Dtype rules: a float32 input gives float32, computed in float64 (numba's ``math.log1p``, the C
library's ``log1p``) and rounded once at the end; every other numeric input gives float64.  The
loop calls the scalar ``log1p`` for every element (SVML vectorisation is switched off in
:mod:`parity.kernels`), so the bits never depend on the row's position or the batch size.  They
may differ in the last bit from ``numpy.log1p`` on another platform's libm; the offline and online
paths both use this kernel, so they agree with each other.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from parity.kernels._common import as_float64, as_numeric, result_dtype, to_float32

_MODES = {"signed": 0, "nan": 1}


@njit(cache=True, nogil=True)
def _log1p(values, mode, out):
    for i in range(values.shape[0]):
        v = values[i]
        if np.isnan(v):
            out[i] = v
        elif v >= 0.0:
            out[i] = math.log1p(v)  # -0.0 >= 0.0: log1p(-0.0) == -0.0
        elif mode == 0:
            out[i] = -math.log1p(-v)
        else:
            out[i] = np.nan


def log1p(values, negative: str = "signed") -> np.ndarray:
    """``log(1 + v)``; negatives: ``"signed"`` -> ``-log1p(-v)``, ``"nan"`` -> NaN."""
    if negative not in _MODES:
        raise ValueError(f"log1p: negative must be one of {sorted(_MODES)}, not {negative!r}")
    arr = as_numeric(values, "log1p")
    want = result_dtype(arr)
    x = as_float64(arr, "log1p")
    out = np.empty(x.shape[0], dtype=np.float64)
    _log1p(x, _MODES[negative], out)
    return out if want == np.float64 else to_float32(out)
