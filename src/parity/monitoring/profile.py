"""The reference profile of a model version: what its inputs and outputs looked like when it was
trained, binned so that served traffic can later be binned the same way and compared (drift).

    from parity.monitoring.profile import build_profile, bin_index
    profile = build_profile({"amount": amounts, "country": countries}, {"score": scores}, bins=10, top_k=20)
    json.dumps(profile, allow_nan=False)   # always strict JSON

The document (``PROFILE_VERSION`` = 1)::

    {"version": 1, "rows": N, "bins": 10, "top_k": 20,
     "feature_names": [name, ...], "output_names": [name, ...],   # the order given (a JSON
     "features": {name: column profile, ...},                      # store may sort the keys of
     "outputs":  {name: column profile, ...}}                      # the mappings)

A column is *numeric* when its values are integers or floats (booleans excluded), *categorical*
when they are strings or booleans (or Python objects holding those).

Numeric column profile::

    {"kind": "numeric", "dtype": "float64", "rows": N, "missing": m, "missing_rate": m / N,
     "edges": [e1, ..., ek], "counts": [c0, ..., ck],
     "min": ..., "max": ..., "mean": ..., "std": ...}

- ``edges`` are the quantiles at 1/bins, 2/bins, ..., (bins-1)/bins of the column's finite values
  (``numpy.quantile(..., method="inverted_cdf")``: every edge is a value that occurs), with
  duplicates removed, so they are finite and strictly increasing; there may be fewer than
  ``bins - 1`` of them (a constant column has one, an all-missing column none).
- The bins are ``(-inf, e1), [e1, e2), ..., [ek, +inf)`` -- closed on the left, the two outer bins
  unbounded -- so ``counts`` has ``len(edges) + 1`` entries and a value's bin is the number of edges
  ``<= value`` (``bin_index``; the rule of ``parity.kernels.bucketize``, which does the counting).
  Any served value, however far outside the training range, falls into some bin.
- Missing values are nulls (None, pandas NA, Arrow nulls) AND NaN: they are counted in ``missing``,
  never in a bin.  ``+inf`` and ``-inf`` are values: they fall into the last and first bin.  So
  ``sum(counts) + missing == rows`` always.
- ``min``, ``max``, ``mean`` and ``std`` (population) are over the finite values; null when there are
  none.  They are informative only: drift tests use the bins.

Categorical column profile::

    {"kind": "categorical", "dtype": "string" | "bool", "rows": N, "missing": m, "missing_rate": m / N,
     "distinct": d, "top": [{"value": v, "count": c}, ...], "other": o}

- ``top``: the ``top_k`` most frequent values, by count descending, ties by value ascending
  (booleans stay booleans, strings stay strings); ``other`` counts every other non-missing value, so
  ``sum(top counts) + other + missing == rows``.

Everything is plain Python (ints, floats, strings, booleans, lists, dicts): ``json.dumps`` with
``allow_nan=False`` accepts it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

PROFILE_VERSION = 1


def _to_numpy(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """(values, missing mask) of a column given as numpy, pandas, Arrow or a list.  Values where
    the mask is set are placeholders."""
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        pa = None
    if pa is not None and isinstance(column, (pa.Array, pa.ChunkedArray)):
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        nulls = np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        t = column.type
        if pa.types.is_boolean(t):
            return np.asarray(column.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool), nulls
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            filled = column.fill_null(0) if column.null_count else column
            return np.asarray(filled.to_numpy(zero_copy_only=False)), nulls
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=object), nulls
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover
        pd = None
    if pd is not None and isinstance(column, (pd.Series, pd.Index, pd.api.extensions.ExtensionArray)):
        s = pd.Series(column)
        nulls = np.asarray(s.isna(), dtype=bool)
        dt = s.dtype
        if pd.api.types.is_bool_dtype(dt):
            return np.asarray(s.fillna(False).astype(bool)), nulls
        if pd.api.types.is_integer_dtype(dt) or pd.api.types.is_float_dtype(dt):
            numpy_dtype = getattr(dt, "numpy_dtype", dt)
            return np.asarray(s.astype(object).where(~nulls, 0), dtype=numpy_dtype), nulls
        return np.asarray(s.astype(object), dtype=object), nulls
    arr = np.asarray(column)
    if arr.ndim != 1:
        arr = arr.reshape(-1) if arr.ndim == 2 and 1 in arr.shape else arr
    if arr.ndim != 1:
        raise ValueError(f"a column must be one-dimensional (or [n, 1]); got shape {list(arr.shape)}")
    if arr.dtype == object:
        nulls = np.array([_is_missing_object(v) for v in arr], dtype=bool)
        return arr, nulls
    if arr.dtype.kind in "US":
        return arr.astype(object), np.zeros(len(arr), dtype=bool)
    return arr, np.zeros(len(arr), dtype=bool)


def _is_missing_object(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    try:
        import pandas as pd

        return v is pd.NA or v is pd.NaT
    except ImportError:  # pragma: no cover
        return False


def _kind(values: np.ndarray, nulls: np.ndarray) -> tuple[str, str]:
    """("numeric" | "categorical", dtype name)."""
    k = values.dtype.kind
    if k == "b":
        return "categorical", "bool"
    if k in "iuf":
        return "numeric", str(values.dtype)
    present = values[~nulls]
    if len(present) and all(isinstance(v, (bool, np.bool_)) for v in present):
        return "categorical", "bool"
    if len(present) and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in present):
        return "numeric", "float64"
    return "categorical", "string"


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def bin_index(edges: list[float] | np.ndarray, values: np.ndarray) -> np.ndarray:
    """The bin of each value under a numeric profile's edges: the number of edges <= value
    (int32; NaN -> -1).  The same rule `build_profile` counts with."""
    from parity.kernels import bucketize

    v = np.asarray(values)
    if v.dtype.kind not in "f":
        v = v.astype(np.float64)
    if len(edges) == 0:
        out = np.zeros(len(v), dtype=np.int32)
        out[np.isnan(v)] = -1
        return out
    return bucketize(v, tuple(float(e) for e in edges))


def _numeric(values: np.ndarray, nulls: np.ndarray, dtype: str, bins: int) -> dict:
    v = values.astype(np.float64) if values.dtype.kind in "iuO" else values
    missing = nulls | np.isnan(v)
    present = v[~missing]
    finite = present[np.isfinite(present)]
    if len(finite) and bins > 1:
        qs = np.quantile(finite, np.arange(1, bins) / bins, method="inverted_cdf")
        edges = [float(e) for e in np.unique(qs)]
    elif len(finite):
        edges = []
    else:
        edges = []
    if len(present):
        idx = bin_index(edges, present)
        counts = np.bincount(idx, minlength=len(edges) + 1)
    else:
        counts = np.zeros(len(edges) + 1, dtype=np.int64)
    n = len(values)
    m = int(missing.sum())
    out = {
        "kind": "numeric",
        "dtype": dtype,
        "rows": n,
        "missing": m,
        "missing_rate": (m / n) if n else 0.0,
        "edges": edges,
        "counts": [int(c) for c in counts],
        "min": None,
        "max": None,
        "mean": None,
        "std": None,
    }
    if len(finite):
        with np.errstate(all="ignore"):
            out.update(
                min=_finite_or_none(float(finite.min())),
                max=_finite_or_none(float(finite.max())),
                mean=_finite_or_none(float(finite.mean())),
                std=_finite_or_none(float(finite.std())),
            )
    return out


def _categorical(values: np.ndarray, nulls: np.ndarray, dtype: str, top_k: int) -> dict:
    present = values[~nulls]
    if dtype == "bool":
        keys = [bool(v) for v in present]
    else:
        keys = [v if isinstance(v, str) else (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)) for v in present]
    counter = Counter(keys)
    ordered = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    top = [{"value": k, "count": int(c)} for k, c in ordered[:top_k]]
    n = len(values)
    m = int(nulls.sum())
    return {
        "kind": "categorical",
        "dtype": dtype,
        "rows": n,
        "missing": m,
        "missing_rate": (m / n) if n else 0.0,
        "distinct": len(counter),
        "top": top,
        "other": int(sum(c for _, c in ordered[top_k:])),
    }


def profile_column(column: Any, bins: int = 10, top_k: int = 20) -> dict:
    """One column's profile (see the module docstring)."""
    values, nulls = _to_numpy(column)
    kind, dtype = _kind(values, nulls)
    if kind == "numeric":
        if values.dtype == object:
            values = np.array([0.0 if m else float(v) for v, m in zip(values, nulls)], dtype=np.float64)
        return _numeric(values, nulls, dtype, bins)
    return _categorical(values, nulls, dtype, top_k)


def build_profile(features: Mapping[str, Any], outputs: Mapping[str, Any], bins: int = 10, top_k: int = 20) -> dict:
    """The reference profile of `features` and `outputs` (name -> column, every column the same
    length): a JSON-serializable dict described in the module docstring."""
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive integer, not {bins!r}")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise ValueError(f"top_k must be a non-negative integer, not {top_k!r}")
    rows: int | None = None
    doc: dict = {
        "version": PROFILE_VERSION, "rows": 0, "bins": bins, "top_k": top_k,
        "feature_names": list(features), "output_names": list(outputs), "features": {}, "outputs": {},
    }  # fmt: skip
    for part, columns in (("features", features), ("outputs", outputs)):
        for name, column in columns.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"{part}: column names must be non-empty strings, not {name!r}")
            p = profile_column(column, bins, top_k)
            if rows is None:
                rows = p["rows"]
            elif p["rows"] != rows:
                raise ValueError(f"{part} column {name!r} has {p['rows']} rows; the others have {rows}")
            doc[part][name] = p
    doc["rows"] = rows or 0
    return doc


__all__ = ["PROFILE_VERSION", "bin_index", "build_profile", "profile_column"]
