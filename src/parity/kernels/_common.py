"""Input checks shared by the kernels (plain Python around the compiled loops)."""

from __future__ import annotations

import numpy as np


def as_numeric(values, kernel: str) -> np.ndarray:
    """A 1-D contiguous numeric (bool, integer or floating) array, or TypeError/ValueError."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{kernel}: values must be a 1-D array, got shape {list(arr.shape)}")
    if arr.dtype == object and len(arr) == 0:
        arr = arr.astype(np.float64)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{kernel}: values must be numeric (bool, integer or float), not {arr.dtype}")
    return np.ascontiguousarray(arr)


def as_float64(arr: np.ndarray, kernel: str) -> np.ndarray:
    """The values as float64 (exact for float32, bool and integers up to 2**53 in magnitude)."""
    return np.ascontiguousarray(arr, dtype=np.float64)


def result_dtype(arr: np.ndarray) -> np.dtype:
    """float32 for float32 inputs, float64 for everything else."""
    return np.dtype(np.float32) if arr.dtype == np.float32 else np.dtype(np.float64)


def finite_scalar(x, kernel: str, name: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{kernel}: {name} must be a number, not {type(x).__name__}") from None
    if not np.isfinite(v):
        raise ValueError(f"{kernel}: {name} must be finite, got {v}")
    return v


def to_float32(out: np.ndarray) -> np.ndarray:
    """Round float64 results to float32 once (IEEE round to nearest even); beyond the float32
    range they become +-inf, quietly (the documented result, not a warning)."""
    with np.errstate(over="ignore"):
        return out.astype(np.float32)
