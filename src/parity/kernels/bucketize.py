"""``bucketize(values, edges) -> int32``: the index of the bucket each value falls in.

Semantics
---------
``edges`` is a strictly increasing sequence of finite numbers ``e[0] < e[1] < ... < e[k-1]``;
they cut the real line into ``k + 1`` buckets that are closed on the left and open on the right::

    bucket 0:  v < e[0]              (including -inf)
    bucket i:  e[i-1] <= v < e[i]    for 1 <= i <= k-1
    bucket k:  v >= e[k-1]           (including +inf)

so a value equal to an edge goes to the bucket that edge opens (the same rule as
``numpy.searchsorted(edges, v, side="right")`` and ``numpy.digitize(v, edges)``).  The result is
the number of edges ``<= v``.  With no edges every value is in bucket 0.

``NaN`` belongs to no bucket and gives ``-1``.  ``-0.0`` and ``0.0`` compare equal (IEEE), so they
land in the same bucket.

Values may be bool, integer or floating; they are compared as float64 (exact for integers up to
2**53 in magnitude; larger int64 values are rounded to the nearest float64 first, the same way on
every path).  Edges that are not strictly increasing or not finite raise ValueError.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from parity.kernels._common import as_float64, as_numeric


@njit(cache=True, nogil=True)
def _bucketize(values, edges, out):
    k = edges.shape[0]
    for i in range(values.shape[0]):
        v = values[i]
        if np.isnan(v):
            out[i] = -1
            continue
        # the number of edges <= v (binary search; first edge > v)
        lo = 0
        hi = k
        while lo < hi:
            mid = (lo + hi) >> 1
            if edges[mid] <= v:
                lo = mid + 1
            else:
                hi = mid
        out[i] = lo


@functools.lru_cache(maxsize=256)
def _edges_from_tuple(edges: tuple) -> np.ndarray:
    e = _check_edges(edges)
    e.flags.writeable = False
    return e


def check_edges(edges) -> np.ndarray:
    """The edges as a validated float64 array (tuples, as definitions hold them, are cached)."""
    if isinstance(edges, tuple):
        try:
            return _edges_from_tuple(edges)
        except TypeError as e:
            if "unhashable" not in str(e):
                raise
    return _check_edges(edges)


def _check_edges(edges) -> np.ndarray:
    e = np.asarray(edges)
    if e.ndim != 1:
        raise ValueError(f"bucketize: edges must be a 1-D sequence, got shape {list(e.shape)}")
    if e.dtype == object and len(e) == 0:
        e = e.astype(np.float64)
    if e.dtype.kind not in "biuf":
        raise TypeError(f"bucketize: edges must be numbers, not {e.dtype}")
    e = np.ascontiguousarray(e, dtype=np.float64)
    if not np.all(np.isfinite(e)):
        raise ValueError(f"bucketize: edges must be finite, got {e.tolist()}")
    if len(e) > 1 and not np.all(e[1:] > e[:-1]):
        raise ValueError(f"bucketize: edges must be strictly increasing, got {e.tolist()}")
    if len(e) >= 2**31 - 1:
        raise ValueError("bucketize: too many edges for an int32 bucket index")
    return e


def bucketize(values, edges) -> np.ndarray:
    """The bucket index (int32) of each value: the number of edges <= value; NaN -> -1."""
    arr = as_float64(as_numeric(values, "bucketize"), "bucketize")
    e = check_edges(edges)
    out = np.empty(arr.shape[0], dtype=np.int32)
    _bucketize(arr, e, out)
    return out
