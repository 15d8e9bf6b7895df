"""Histogram kernels for drift monitoring: count served values into a reference profile's bins.

The bins are the profile's (``parity.monitoring.profile``): a numeric column with strictly
increasing finite edges ``e1 < ... < ek`` has ``k + 1`` bins ``(-inf, e1), [e1, e2), ..., [ek, +inf)``,
and a value's bin is *the number of edges <= value* (the rule of ``bucketize`` and of
``numpy.searchsorted(edges, v, side="right")``).  ``-inf``/``+inf`` fall in the first/last bin;
``NaN`` is *missing*: it is counted apart, never in a bin.  With no edges there is one bin.

Every counting function ADDS to the arrays it is given (``out``, ``counts``, ``missing``, ...), so
a window's counts are accumulated batch after batch without allocation, and two windows' counts
merge by addition.

API
---
``bin_counts(values, edges, out) -> int``
    1-D ``values`` (any numeric dtype; compared as float64), ``edges`` (validated like
    ``bucketize``), ``out`` int64 of length ``len(edges) + 1``.  Adds the bin counts to ``out`` and
    returns the number of missing (NaN) values.

``NumericBinner(edges_per_feature)`` -- the edges of many features, prepared once::

    binner = NumericBinner([edges_a, edges_b, edges_c])          # ragged: edges concatenated + offsets
    counts = binner.new_counts()                                  # int64 [features, max_bins], zeros
    missing = np.zeros(binner.n_features, np.int64)
    binner.count(batch, counts, missing)                          # batch: [rows, features] float32/64
    binner.count(batch, counts, missing, columns=[4, 0, 2])       # feature j is batch column columns[j]
    binner.count(batch, counts, missing, below=b, above=a)        # also count values < lo[j] / > hi[j]

    binner.count(batch, window_counts, window_missing, targets=[3, 0, 5])   # feature j -> row targets[j]

  One compiled pass over the batch (rows outer for row-major batches and views, columns outer for
  column-major ones; strided views are read in place, not copied); no Python per row or per
  feature.  With up to 24 edges per feature (the profile's default is 9) a value's bin is a
  branch-free count over the edges padded with +inf; with more, a binary search.
  ``counts[j, nbins[j]:]`` stays zero.  ``below``/``above`` count values strictly outside
  ``[lo[j], hi[j]]`` (the training range, when the binner was built with ``lo``/``hi``; NaN bounds
  disable the check for a feature); infinities count too.  ``count_unchecked`` skips the argument
  checks for callers that validated their reused arrays once (``parity.monitoring.drift.Counts``).

``WindowBinner(columns)`` -- every column of a window (numeric and categorical codes, features and
  outputs) prepared once; ``count(a0, a1, counts, missing, below, above)`` counts two numeric 2-D
  batches in one compiled call (what ``parity.monitoring.drift.Counts.add`` uses for numeric
  arrays).  Per column the values are copied once into a contiguous float64 buffer; with up to 24
  edges (32 category keys) each bin count is then a vectorised reduction over the rows
  (``#{v >= edge}`` differences, ``#{v == key}``), with more a binary search per value.  The counts
  are exactly those of ``NumericBinner`` / ``CategoryIndex``.

``CategoryIndex(top_values)`` -- the profile's top-k values mapped to ``0..k-1``, ``k`` = "other"::

    index = CategoryIndex(["FR", "DE", "US"])
    out = np.zeros(index.n_bins, np.int64)
    missing = index.count(values, out)                            # adds; returns the missing count

  Strings (object or numpy ``U``/``S`` arrays, lists) are counted with one C-level ``Counter`` pass
  and a dict lookup per *distinct* value.  Missing: ``None``, NaN, pandas NA.  A value not among the
  top values counts as "other".  Lookups try the value itself, then (for non-strings)
  ``str(value)``, so a profile whose categories were stored as strings ("3") still matches the
  integer 3; booleans match ``True``/``False`` (a string profile of booleans stores
  "True"/"False", which the ``str`` fallback also matches).
  Bool and numeric arrays (e.g. category codes in a float tensor) go through one compiled pass: each
  top value's *number* (bools 0/1, numbers, strings that parse as a finite number: "3" -> 3.0; the
  first top value with a given number wins) is looked up (a branch-free scan up to 32 top values,
  a binary search beyond); NaN is missing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from numba import njit

from parity.kernels._common import as_float64, as_numeric
from parity.kernels.bucketize import check_edges


@njit(cache=True, nogil=True)
def _search(edges, lo, hi, v):
    # the number of edges[lo:hi] <= v.  Few edges (the usual 9): a branch-free count, which does
    # not pay for mispredicted branches on random data; many: a binary search for the first edge > v
    if hi - lo <= 24:
        n = 0
        for e in range(lo, hi):
            n += edges[e] <= v
        return n
    a = lo
    b = hi
    while a < b:
        mid = (a + b) >> 1
        if edges[mid] <= v:
            a = mid + 1
        else:
            b = mid
    return a - lo


@njit(cache=True, nogil=True)
def _bin_counts(values, edges, out):
    k = edges.shape[0]
    missing = 0
    for i in range(values.shape[0]):
        v = values[i]
        if np.isnan(v):
            missing += 1
        else:
            out[_search(edges, 0, k, v)] += 1
    return missing


def bin_counts(values, edges, out: np.ndarray) -> int:
    """Add the bin counts of `values` under `edges` to `out` (int64, ``len(edges) + 1``); return the
    number of missing (NaN) values."""
    arr = as_float64(as_numeric(values, "bin_counts"), "bin_counts")
    e = check_edges(tuple(edges) if isinstance(edges, list) else edges)
    if not isinstance(out, np.ndarray) or out.dtype != np.int64 or out.ndim != 1 or out.shape[0] != e.shape[0] + 1:
        raise ValueError(f"bin_counts: out must be a 1-D int64 array of length {e.shape[0] + 1}")
    return int(_bin_counts(arr, e, out))


@njit(cache=True, nogil=True, inline="always")
def _tally(v, j, t, nb, lo, hi, counts, missing, below, above):
    # add value v of feature j, whose bin is nb (ignored for NaN), to row t of the outputs; the
    # range check always runs (no range: lo/hi are NaN or -inf/+inf, and it never counts)
    if np.isnan(v):
        missing[t] += 1
        return
    counts[t, nb] += 1
    if v < lo[j]:
        below[t] += 1
    elif v > hi[j]:
        above[t] += 1


# The 2-D kernels: `padded` [features, K] holds each feature's edges padded with +inf to a common
# width K <= 24; then a value's bin is a branch-free count of the edges <= v (random data make a
# binary search's branches mispredict), clamped to the feature's edge count (only v = +inf counts
# the pads).  K = 0 means "more edges than that": a binary search over the ragged `edges`.  The
# choice is made outside the loops (a branch inside them costs 2-3x).


@njit(cache=True, nogil=True)
def _bin_counts_2d_rows(batch, columns, targets, edges, offsets, padded, lo, hi, counts, missing, below, above):
    nf = columns.shape[0]
    k = padded.shape[1]
    if k > 0:
        for i in range(batch.shape[0]):
            for j in range(nf):
                v = np.float64(batch[i, columns[j]])
                n = 0
                for e in range(k):
                    n += padded[j, e] <= v
                nb = min(n, offsets[j + 1] - offsets[j])
                _tally(v, j, targets[j], nb, lo, hi, counts, missing, below, above)
    else:
        for i in range(batch.shape[0]):
            for j in range(nf):
                v = np.float64(batch[i, columns[j]])
                nb = _search(edges, offsets[j], offsets[j + 1], v) if not np.isnan(v) else 0
                _tally(v, j, targets[j], nb, lo, hi, counts, missing, below, above)


@njit(cache=True, nogil=True)
def _bin_counts_2d_cols(batch, columns, targets, edges, offsets, padded, lo, hi, counts, missing, below, above):
    nf = columns.shape[0]
    k = padded.shape[1]
    for j in range(nf):
        c = columns[j]
        t = targets[j]
        ne = offsets[j + 1] - offsets[j]
        if k > 0:
            for i in range(batch.shape[0]):
                v = np.float64(batch[i, c])
                n = 0
                for e in range(k):
                    n += padded[j, e] <= v
                _tally(v, j, t, min(n, ne), lo, hi, counts, missing, below, above)
        else:
            for i in range(batch.shape[0]):
                v = np.float64(batch[i, c])
                nb = _search(edges, offsets[j], offsets[j + 1], v) if not np.isnan(v) else 0
                _tally(v, j, t, nb, lo, hi, counts, missing, below, above)


class NumericBinner:
    """The bin edges of several numeric features, prepared once (edges concatenated + offsets) for
    counting 2-D batches ``[rows, features]`` in one compiled pass.  See the module docstring."""

    def __init__(self, edges_per_feature: Sequence, lo: Sequence[float] | None = None, hi: Sequence[float] | None = None):
        checked = [check_edges(tuple(float(x) for x in e)) for e in edges_per_feature]
        self.n_features = len(checked)
        self.nbins = np.array([len(e) + 1 for e in checked], dtype=np.int64)
        self.max_bins = int(self.nbins.max()) if self.n_features else 1
        self.offsets = np.zeros(self.n_features + 1, dtype=np.int64)
        if self.n_features:
            self.offsets[1:] = np.cumsum([len(e) for e in checked])
        self.edges = np.ascontiguousarray(np.concatenate(checked) if checked else np.zeros(0), dtype=np.float64)
        # up to 24 edges per feature: a branch-free count over the edges padded with +inf to a
        # common width (random data make a binary search's branches mispredict); more: binary search
        width = max((len(e) for e in checked), default=0)
        self.padded = np.full((self.n_features, width if 0 < width <= 24 else 0), np.inf)
        for j, e in enumerate(checked):
            if self.padded.shape[1]:
                self.padded[j, : len(e)] = e
        nan = np.full(self.n_features, np.nan)
        self.lo = nan.copy() if lo is None else np.asarray([np.nan if x is None else float(x) for x in lo], dtype=np.float64)
        self.hi = nan.copy() if hi is None else np.asarray([np.nan if x is None else float(x) for x in hi], dtype=np.float64)
        if self.lo.shape != (self.n_features,) or self.hi.shape != (self.n_features,):
            raise ValueError("NumericBinner: lo and hi need one bound per feature")
        self._identity = np.arange(self.n_features, dtype=np.int64)
        self._no_bounds = np.full(self.n_features, np.nan)

    def new_counts(self) -> np.ndarray:
        """A zero int64 counts matrix ``[features, max_bins]``."""
        return np.zeros((self.n_features, self.max_bins), dtype=np.int64)

    def count(self, batch, counts: np.ndarray, missing: np.ndarray, columns=None,
              below: np.ndarray | None = None, above: np.ndarray | None = None, targets=None) -> None:  # fmt: skip
        """Add the bin counts of a ``[rows, columns]`` batch to `counts` ``[features, >= max_bins]``
        and its NaNs to `missing` ``[features]`` (both int64); feature ``j`` is column
        ``columns[j]`` (default ``j``).  With `below` and `above` (int64 ``[features]``) also count
        values outside the training range ``[lo, hi]``.  With `targets`, feature ``j`` is counted
        into row ``targets[j]`` of `counts`, `missing`, `below` and `above` (which may then have
        more rows than features: a window's matrix holding other columns too)."""
        arr = np.asarray(batch)
        if arr.ndim == 1 and self.n_features == 1:
            arr = arr.reshape(-1, 1)
        if arr.ndim != 2:
            raise ValueError(f"NumericBinner.count: batch must be 2-D [rows, features], got shape {list(arr.shape)}")
        if arr.dtype not in (np.float64, np.float32):
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"NumericBinner.count: batch must be numeric, not {arr.dtype}")
            arr = arr.astype(np.float64)
        if columns is None:
            if arr.shape[1] != self.n_features:
                raise ValueError(f"NumericBinner.count: batch has {arr.shape[1]} columns, the binner {self.n_features} features")
            cols = self._identity
        else:
            cols = np.ascontiguousarray(columns, dtype=np.int64)
            if cols.shape != (self.n_features,) or (len(cols) and (cols.min() < 0 or cols.max() >= arr.shape[1])):
                raise ValueError("NumericBinner.count: columns must give one batch column per feature")
        if targets is None:
            tgt, n_out = self._identity, self.n_features
        else:
            tgt = np.ascontiguousarray(targets, dtype=np.int64)
            n_out = counts.shape[0] if counts.ndim == 2 else -1
            if tgt.shape != (self.n_features,) or (len(tgt) and (tgt.min() < 0 or tgt.max() >= n_out)):
                raise ValueError("NumericBinner.count: targets must give one row of counts per feature")
        if counts.dtype != np.int64 or counts.ndim != 2 or counts.shape[0] != n_out or counts.shape[1] < self.max_bins:
            raise ValueError(f"NumericBinner.count: counts must be int64 [{n_out}, >= {self.max_bins}]")
        if missing.dtype != np.int64 or missing.shape != (n_out,):
            raise ValueError(f"NumericBinner.count: missing must be int64 [{n_out}]")
        check_range = below is not None and above is not None
        if check_range:
            for a in (below, above):
                if a.dtype != np.int64 or a.shape != (n_out,):
                    raise ValueError(f"NumericBinner.count: below/above must be int64 [{n_out}]")
        else:
            below = above = missing  # unused (check_range is False)
        self.count_unchecked(arr, counts, missing, below, above, cols, tgt, check_range)

    def count_unchecked(self, arr, counts, missing, below, above, cols, tgt, check_range: bool) -> None:
        """`count` without the argument checks, for callers that validated their (reused) arrays
        once: `arr` float32/float64 2-D, `cols`/`tgt` int64 in range, outputs int64 of the right
        shapes (`below`/`above` may be `missing` when `check_range` is False)."""
        if check_range:
            lo, hi = self.lo, self.hi
        else:  # NaN bounds never compare true: nothing is ever added to below/above (= missing here)
            lo = hi = self._no_bounds
            below = above = missing
        args = (cols, tgt, self.edges, self.offsets, self.padded, lo, hi, counts, missing, below, above)
        if abs(arr.strides[0]) < abs(arr.strides[1]):  # column-major (or a view of one): columns outer
            _bin_counts_2d_cols(arr, *args)
        else:  # row-major, or a row-major view: no copy (the kernel reads any strides)
            _bin_counts_2d_rows(arr, *args)


@njit(cache=True, nogil=True)
def _count_window(feat, outp, src, col, kind, tgt, nedge, padded, edges, offsets, lo, hi,
                  keys, kbins, koff, other, counts, missing, below, above):
    # A whole window batch in one compiled pass per column (columns outer).  Column c is column
    # col[c] of feat (src 0) or outp (src 1), counted into row tgt[c].  The column is first copied
    # into a contiguous float64 buffer; then, with few edges/keys, every count is a SIMD-friendly
    # reduction over the rows instead of a scatter per value:
    #   numeric (kind 0): with G(e) = #{v >= e} (NaN never compares true) and strictly increasing
    #   edges, bin b (= the number of edges <= v) holds G(e_b) - G(e_b+1), bin 0 the present values
    #   minus G(e_1); below/above are #{v < lo} / #{v > hi} (a NaN bound counts nothing) -- exactly
    #   the per-value rule of `_tally`.  More than 24 edges: a binary search per value.
    #   categorical (kind 1): keys[koff[c]:koff[c+1]] sorted and distinct; key e's bin gets
    #   #{v == key}, "other" the present values no key matched (`_count_codes`'s rule); more than
    #   32 keys: a binary search per value.
    nbuf = max(feat.shape[0], outp.shape[0])
    buf = np.empty(nbuf)
    wide = padded.shape[1] == 0
    for c in range(src.shape[0]):
        a = feat if src[c] == 0 else outp
        j = col[c]
        t = tgt[c]
        n = a.shape[0]
        present = 0
        for i in range(n):
            v = np.float64(a[i, j])
            buf[i] = v
            present += v == v
        missing[t] += n - present
        if kind[c] == 0:
            ne = nedge[c]
            if not wide:
                prev = present
                for e in range(ne):
                    x = padded[c, e]
                    g = 0
                    for i in range(n):
                        g += buf[i] >= x
                    counts[t, e] += prev - g
                    prev = g
                counts[t, ne] += prev
            else:
                for i in range(n):
                    v = buf[i]
                    if v == v:
                        counts[t, _search(edges, offsets[c], offsets[c + 1], v)] += 1
            l = lo[c]
            h = hi[c]
            bl = 0
            ab = 0
            for i in range(n):
                bl += buf[i] < l
                ab += buf[i] > h
            below[t] += bl
            above[t] += ab
        else:
            k0 = koff[c]
            k1 = koff[c + 1]
            oth = other[c]
            if k1 - k0 <= 32:
                matched = 0
                for e in range(k0, k1):
                    x = keys[e]
                    m = 0
                    for i in range(n):
                        m += buf[i] == x
                    counts[t, kbins[e]] += m
                    matched += m
                counts[t, oth] += present - matched
            else:
                for i in range(n):
                    v = buf[i]
                    if v != v:
                        continue
                    x = k0
                    y = k1
                    while x < y:
                        mid = (x + y) >> 1
                        if keys[mid] < v:
                            x = mid + 1
                        else:
                            y = mid
                    if x < k1 and keys[x] == v:
                        counts[t, kbins[x]] += 1
                    else:
                        counts[t, oth] += 1


class WindowBinner:
    """Every column of a window (numeric and categorical, features and outputs) prepared once for
    counting numeric 2-D batches in one compiled pass (``parity.monitoring.drift.Counts``).

    ``columns``: per output row ``t`` (in order), ``(source, batch_column, spec)`` with ``source``
    0 or 1 (which of the two batches), and ``spec`` either ``("numeric", edges, lo, hi)`` or
    ``("categorical", CategoryIndex)``.  ``count(a0, a1, counts, missing, below, above)`` adds
    (``a0``/``a1``: float32/float64 2-D, already checked; pass a ``[rows, 0]`` array for an absent
    source)."""

    def __init__(self, columns: Sequence):
        nc = len(columns)
        self.src = np.array([c[0] for c in columns], dtype=np.int64)
        self.col = np.array([c[1] for c in columns], dtype=np.int64)
        self.kind = np.array([0 if c[2][0] == "numeric" else 1 for c in columns], dtype=np.int64)
        self.tgt = np.arange(nc, dtype=np.int64)
        num_edges = [check_edges(tuple(float(x) for x in c[2][1])) if c[2][0] == "numeric" else np.zeros(0) for c in columns]
        self.nedge = np.array([len(e) for e in num_edges], dtype=np.int64)
        self.offsets = np.zeros(nc + 1, dtype=np.int64)
        if nc:
            self.offsets[1:] = np.cumsum(self.nedge)
        self.edges = np.ascontiguousarray(np.concatenate(num_edges) if nc else np.zeros(0), dtype=np.float64)
        width = int(self.nedge.max()) if nc else 0
        self.padded = np.full((nc, width if 0 < width <= 24 else 0), np.inf)
        if self.padded.shape[1]:
            for c, e in enumerate(num_edges):
                self.padded[c, : len(e)] = e
        nan = float("nan")
        self.lo = np.array([nan if c[2][0] != "numeric" or c[2][2] is None else float(c[2][2]) for c in columns], dtype=np.float64)
        self.hi = np.array([nan if c[2][0] != "numeric" or c[2][3] is None else float(c[2][3]) for c in columns], dtype=np.float64)
        keys, kbins, koff, other = [], [], [0], []
        for c in columns:
            if c[2][0] == "numeric":
                other.append(0)
            else:
                idx = c[2][1]
                keys.extend(idx._num_keys.tolist())
                kbins.extend(idx._num_bins.tolist())
                other.append(idx.n_bins - 1)
            koff.append(len(keys))
        self.keys = np.array(keys, dtype=np.float64)
        self.kbins = np.array(kbins, dtype=np.int64)
        self.koff = np.array(koff, dtype=np.int64)
        self.other = np.array(other, dtype=np.int64)

    def count(self, a0, a1, counts, missing, below, above) -> None:
        _count_window(a0, a1, self.src, self.col, self.kind, self.tgt, self.nedge, self.padded, self.edges, self.offsets,
                      self.lo, self.hi, self.keys, self.kbins, self.koff, self.other, counts, missing, below, above)  # fmt: skip


@njit(cache=True, nogil=True)
def _count_codes(values, keys, bins, other, out):
    # keys sorted ascending (float64), bins[i] the bin of keys[i]; returns the NaN count
    missing = 0
    k = keys.shape[0]
    for i in range(values.shape[0]):
        v = np.float64(values[i])
        if np.isnan(v):
            missing += 1
            continue
        if k <= 32:  # few keys: a branch-free scan (random codes defeat a binary search's branches)
            b = other
            for j in range(k):
                b = bins[j] if keys[j] == v else b
            out[b] += 1
            continue
        lo = 0
        hi = k
        while lo < hi:
            mid = (lo + hi) >> 1
            if keys[mid] < v:
                lo = mid + 1
            else:
                hi = mid
        if lo < k and keys[lo] == v:
            out[bins[lo]] += 1
        else:
            out[other] += 1
    return missing


def _is_missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover
        return False
    return v is pd.NA or v is pd.NaT


def _as_number(v) -> float | None:
    """The number a category value stands for in a numeric array: bools 0/1, numbers themselves,
    strings that parse as a finite number ("3", "2.5"); otherwise None."""
    if isinstance(v, (bool, np.bool_)):
        return float(bool(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        x = float(v)
        return x if math.isfinite(x) else None
    if isinstance(v, str):
        try:
            x = float(v)
        except ValueError:
            return None
        return x if math.isfinite(x) and v.strip() == v else None
    return None


class CategoryIndex:
    """A categorical profile's top values mapped to ``0..k-1``; bin ``k`` is "other"."""

    def __init__(self, top_values: Sequence):
        self.values = list(top_values)
        self.n_bins = len(self.values) + 1
        self._index: dict = {}
        for i, v in enumerate(self.values):
            self._index.setdefault(v, i)
        # numeric keys for numeric/bool arrays: a value's number (bool -> 0/1, "3" -> 3.0), first wins
        numeric: dict[float, int] = {}
        for i, v in enumerate(self.values):
            x = _as_number(v)
            if x is not None:
                numeric.setdefault(x, i)
        order = sorted(numeric)
        self._num_keys = np.array(order, dtype=np.float64)
        self._num_bins = np.array([numeric[x] for x in order], dtype=np.int64)

    def lookup(self, v) -> int | None:
        """The bin of one (non-missing) value: its top index, or ``k`` for "other"."""
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        i = self._index.get(v)
        if i is None and not isinstance(v, str):
            i = self._index.get(str(v))
        return self.n_bins - 1 if i is None else i

    def count(self, values, out: np.ndarray) -> int:
        """Add the category counts of `values` to `out` (int64, ``n_bins``); return the number of
        missing values."""
        if out.dtype != np.int64 or out.shape != (self.n_bins,):
            raise ValueError(f"CategoryIndex.count: out must be int64 [{self.n_bins}]")
        arr = values if isinstance(values, np.ndarray) else None
        if arr is None:
            try:
                import pandas as pd

                if isinstance(values, (pd.Series, pd.Index)):
                    arr = (
                        values.to_numpy(dtype=object)
                        if values.dtype == object or str(values.dtype) in ("string", "category")
                        else values.to_numpy()
                    )
            except ImportError:  # pragma: no cover
                pass
        if arr is not None and arr.dtype.kind in "biuf":
            flat = arr.reshape(-1)
            if flat.dtype.kind == "b" or (flat.dtype.kind in "iu" and flat.dtype.itemsize > 4):
                flat = flat.astype(np.float64)  # exact for bools; int64 beyond 2**53 rounds, as everywhere
            return int(_count_codes(np.ascontiguousarray(flat), self._num_keys, self._num_bins, self.n_bins - 1, out))
        seq = arr.reshape(-1).tolist() if arr is not None else values
        missing = 0
        for v, c in Counter(seq).items():
            if _is_missing(v):
                missing += c
            else:
                out[self.lookup(v)] += c
        return missing


__all__ = ["CategoryIndex", "NumericBinner", "WindowBinner", "bin_counts"]
