"""``stable_hash(values, buckets) -> int64``: a deterministic hash bucket for categorical values.

Never Python's ``hash()`` (salted per process by ``PYTHONHASHSEED``): the bucket of a value is the
same in every process, on every machine, on the offline and the online path.

Algorithm (exact; ``*`` is multiplication modulo 2**64, ``>>`` a logical shift of a uint64)
---------------------------------------------------------------------------------------------
1. The value's bytes:

   - a string: its UTF-8 encoding (no terminator, no normalisation: "é" as one code point and as
     "e" + combining accent are different strings);
   - an integer: its value as int64, two's complement, 8 bytes little-endian.

2. FNV-1a 64 over those bytes::

       h = 0xcbf29ce484222325
       for each byte b:  h = (h XOR b) * 0x100000001b3

3. The MurmurHash3 64-bit finaliser (``fmix64``), so every input bit reaches the low bits that the
   modulo keeps::

       h ^= h >> 33;  h *= 0xff51afd7ed558ccd
       h ^= h >> 33;  h *= 0xc4ceb9fe1a85ec53
       h ^= h >> 33

4. The bucket: ``h mod buckets`` (unsigned), an int64 in ``[0, buckets)``.

Missing values (``None``, ``pandas.NA``, or a float NaN in an object column as pandas writes it)
give ``-1``.

Inputs: a 1-D array (or sequence) of Python ``str`` -- numpy object arrays, as the feature
definitions hold strings, or numpy ``U`` arrays -- or of integers (any numpy integer dtype; the
values are hashed as int64, so an int32 key and an int64 key with the same value get the same
bucket; uint64 values above 2**63 - 1 are rejected).  Floats and bools are rejected (hash a
categorical, not a measurement) with TypeError; strings that are not valid Unicode (lone
surrogates) with ValueError.
``buckets`` is an integer >= 1.  The string 1 and the integer 1 hash differently (different bytes).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
from numba import njit
from pandas.api.types import infer_dtype

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_S8 = np.uint64(8)
_BYTE = np.uint64(0xFF)


@njit(cache=True, nogil=True, inline="always")
def _fmix64(h):
    h ^= h >> _S33
    h *= _M1
    h ^= h >> _S33
    h *= _M2
    h ^= h >> _S33
    return h


@njit(cache=True, nogil=True)
def _hash_int64(bits, buckets, out):
    """`bits`: the int64 values viewed as uint64."""
    for i in range(bits.shape[0]):
        x = bits[i]
        h = _FNV_OFFSET
        for _ in range(8):
            h ^= x & _BYTE
            h *= _FNV_PRIME
            x >>= _S8
        out[i] = np.int64(_fmix64(h) % buckets)


@njit(cache=True, nogil=True)
def _hash_utf8(data, offsets, valid, buckets, out):
    """String i is data[offsets[i]:offsets[i + 1]] (UTF-8); valid[i] False -> -1."""
    for i in range(offsets.shape[0] - 1):
        if not valid[i]:
            out[i] = -1
            continue
        h = _FNV_OFFSET
        for j in range(offsets[i], offsets[i + 1]):
            h ^= np.uint64(data[j])
            h *= _FNV_PRIME
        out[i] = np.int64(_fmix64(h) % buckets)


def _check_buckets(buckets) -> np.uint64:
    if isinstance(buckets, (bool, np.bool_)) or not isinstance(buckets, (int, np.integer)):
        raise TypeError(f"stable_hash: buckets must be an integer, not {type(buckets).__name__}")
    if not 1 <= int(buckets) <= 2**63 - 1:
        raise ValueError(f"stable_hash: buckets must be in [1, 2**63 - 1], got {buckets}")
    return np.uint64(int(buckets))


_SMALL = 64  # below this many strings, Python's encoder is cheaper than building an Arrow array


def _utf8_small(arr: np.ndarray):
    """(data uint8, offsets int64, valid bool) of a few strings, with str.encode."""
    parts = []
    valid = np.ones(len(arr), dtype=np.bool_)
    for i, v in enumerate(arr.tolist()):
        if isinstance(v, str):
            try:
                parts.append(v.encode("utf-8"))
            except UnicodeError as e:
                raise ValueError(f"stable_hash: a string is not valid Unicode and has no UTF-8 bytes ({e})") from None
        elif v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            parts.append(b"")
            valid[i] = False
        else:
            raise TypeError(f"stable_hash: a string column holds a {type(v).__name__} ({v!r}); every value must be a str or None")
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    return np.frombuffer(b"".join(parts), dtype=np.uint8), offsets, valid


def _utf8_columns(arr: np.ndarray):
    """(data uint8, offsets int64, valid bool) of the strings, through Arrow's UTF-8 encoder."""
    if len(arr) < _SMALL:
        return _utf8_small(arr)
    # Arrow would also take bytes (and other objects) into a string array; the small path
    # rejects them, so this one does too (infer_dtype is one pass in C)
    if infer_dtype(arr, skipna=True) not in ("string", "empty"):
        return _utf8_small(arr)  # raises the same TypeError, naming the first bad value
    try:
        a = pa.array(arr, type=pa.large_string(), from_pandas=True)
    except UnicodeError as e:
        raise ValueError(f"stable_hash: a string is not valid Unicode and has no UTF-8 bytes ({e})") from None
    except (pa.ArrowTypeError, pa.ArrowInvalid, TypeError) as e:
        bad = next((v for v in arr.tolist() if v is not None and not isinstance(v, (str, float))), None)
        what = f"a {type(bad).__name__} ({bad!r})" if bad is not None else "a value that is not a string"
        raise TypeError(f"stable_hash: a string column holds {what}; every value must be a str or None ({e})") from None
    n = len(a)
    _, off_buf, data_buf = a.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64, count=n + 1, offset=a.offset * 8)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None and data_buf.size else np.zeros(0, np.uint8)
    valid = np.ones(n, dtype=np.bool_) if a.null_count == 0 else ~a.is_null().to_numpy(zero_copy_only=False)
    return data, offsets, np.ascontiguousarray(valid)


def stable_hash(values, buckets: int) -> np.ndarray:
    """Bucket in [0, buckets) of each string/integer (FNV-1a 64 + fmix64, mod buckets); missing -> -1."""
    b = _check_buckets(buckets)
    arr = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if arr.ndim != 1:
        raise ValueError(f"stable_hash: values must be a 1-D array, got shape {list(arr.shape)}")
    out = np.empty(arr.shape[0], dtype=np.int64)
    if arr.dtype.kind in "iu":
        if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError("stable_hash: uint64 values above 2**63 - 1 cannot be hashed as int64")
        bits = np.ascontiguousarray(arr, dtype=np.int64).view(np.uint64)
        _hash_int64(bits, b, out)
        return out
    if arr.dtype.kind in "OU" or (arr.dtype.kind == "f" and arr.size == 0 and not isinstance(values, np.ndarray)):
        if arr.dtype.kind != "O":
            arr = arr.astype(object)
        data, offsets, valid = _utf8_columns(arr)
        _hash_utf8(data, offsets, valid, b, out)
        return out
    raise TypeError(f"stable_hash: values must be strings (object or U array) or integers, not {arr.dtype}")
