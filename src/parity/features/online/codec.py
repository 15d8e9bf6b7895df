"""The binary form of one entity's values of one feature view, shared by every online backend.

Format version 1 (all integers little-endian, no padding):

    offset  size  field
    0       1     format version (1)
    1       8     event_ts   int64, ns since the Unix epoch (UTC)
    9       8     created_ts int64, ns since the Unix epoch (UTC)
    17      4     schema fingerprint: CRC-32 of "name:dtype,name:dtype,..." of the view's schema
    21      B     null bitmap, B = ceil(n_features / 8); bit i (byte i // 8, bit i % 8, LSB first)
                  set = feature i is null
    21+B    ...   one fixed-width slot per feature, in schema order:
                    bool u1 (0/1) | int32 i4 | int64 i8 | float32 f4 | float64 f8 (IEEE 754 bits,
                    so NaN payloads and -0.0 survive) | string: u4 byte length of its UTF-8 text
                  a null value's slot is all zero bytes
    ...     ...   the UTF-8 bytes of the string features, in schema order, back to back

Every blob of one view has the same fixed-size prefix (everything up to the string bytes), so a
read decodes the fixed part of all entities at once with one numpy structured dtype and walks only
the string bytes in Python.  The Redis compare-and-set script reads event_ts and created_ts at
their fixed offsets (1 and 9).  A blob whose version or fingerprint does not match the view as it is
defined now (the schema changed since it was written) reads as NOT_FOUND until it is rewritten.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from parity.errors import InvalidInput
from parity.features.definitions import DTYPES, FeatureView

FORMAT_VERSION = 1
HEADER_SIZE = 21
_SLOT = {"bool": "u1", "int32": "<i4", "int64": "<i8", "float32": "<f4", "float64": "<f8", "string": "<u4"}
# the value an output column holds where the value is null (the null mask is the truth)
_FILL = {"bool": False, "int32": 0, "int64": 0, "float32": np.nan, "float64": np.nan, "string": None}


@dataclass(frozen=True)
class Layout:
    """How one schema's values are packed (see the module docstring)."""

    names: tuple[str, ...]
    dtypes: tuple[str, ...]
    fingerprint: int
    bitmap_bytes: int
    fixed: np.dtype  # the structured dtype of the fixed-size prefix
    strings: tuple[int, ...]  # indices of the string features

    @property
    def fixed_size(self) -> int:
        return self.fixed.itemsize


@lru_cache(maxsize=1024)
def _layout(schema: tuple[tuple[str, str], ...]) -> Layout:
    n = len(schema)
    nb = (n + 7) // 8
    fp = zlib.crc32(",".join(f"{name}:{dt}" for name, dt in schema).encode())
    fields = [("version", "u1"), ("event_ts", "<i8"), ("created_ts", "<i8"), ("fingerprint", "<u4"), ("nulls", "u1", (nb,))]
    fields += [(f"f{i}", _SLOT[dt]) for i, (_, dt) in enumerate(schema)]
    dtype = np.dtype(fields)  # packed: numpy structured dtypes have no padding unless align=True
    return Layout(
        names=tuple(s[0] for s in schema), dtypes=tuple(s[1] for s in schema), fingerprint=fp, bitmap_bytes=nb,
        fixed=dtype, strings=tuple(i for i, (_, dt) in enumerate(schema) if dt == "string"),
    )  # fmt: skip


_LAYOUTS: dict[int, tuple[tuple, Layout]] = {}


def layout(view: FeatureView) -> Layout:
    """The view's layout, computed once per schema object (views are immutable)."""
    hit = _LAYOUTS.get(id(view.schema))
    if hit is not None and hit[0] is view.schema:
        return hit[1]
    lay = _layout(tuple((f.name, f.dtype) for f in view.schema))
    if len(_LAYOUTS) > 1024:
        _LAYOUTS.clear()
    _LAYOUTS[id(view.schema)] = (view.schema, lay)  # the schema is kept alive: its id stays its own
    return lay


def _column(view: FeatureView, name: str, dt: str, col, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(values as the declared numpy dtype with nulls filled, null mask) of one input column.
    Nulls: a numpy masked array's mask, or None in an object array / list."""
    where = f"online write of view {view.name!r}: feature {name!r}"
    mask = None
    if isinstance(col, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(col)
        col = col.data
    arr = np.asarray(col) if isinstance(col, np.ndarray) else np.array(col, dtype=object)
    if arr.ndim != 1 or len(arr) != rows:
        raise InvalidInput(f"{where} has shape {list(arr.shape)}; expected {rows} values")
    want = DTYPES[dt]
    if arr.dtype == object:
        none = np.fromiter((v is None for v in arr), dtype=bool, count=rows)
        mask = none if mask is None else (mask | none)
        if dt == "string":
            bad = [v for v, m in zip(arr, mask) if not m and not isinstance(v, str)]
            if bad:
                raise InvalidInput(f"{where} is a string feature but holds {type(bad[0]).__name__} {bad[0]!r}")
            return arr, mask
        if dt in ("int32", "int64"):
            info = np.iinfo(want)
            for v, m in zip(arr, mask):
                if not m and (
                    isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not info.min <= int(v) <= info.max
                ):
                    raise InvalidInput(f"{where}: {v!r} is not an {dt}")
        try:
            filled = np.where(mask, _FILL[dt] if dt.startswith("float") else 0, arr)
            out = np.array(list(filled), dtype=want) if rows else np.zeros(0, dtype=want)
        except (TypeError, ValueError, OverflowError) as e:
            raise InvalidInput(f"{where}: cannot read its values as {dt}: {e}") from e
        return out, mask
    if dt == "string":
        raise InvalidInput(f"{where} is a string feature; pass a numpy object array of str (None for null), not {arr.dtype}")
    if arr.dtype != want:
        if not np.can_cast(arr.dtype, want, casting="safe"):
            raise InvalidInput(f"{where} is {arr.dtype}, but the schema declares {dt}")
        arr = arr.astype(want)
    return arr, (np.zeros(rows, dtype=bool) if mask is None else mask)


def encode(view: FeatureView, columns: dict, event_ts: np.ndarray, created_ts: np.ndarray, rows: int) -> list[bytes]:
    """One blob per row."""
    lay = layout(view)
    missing = [n for n in lay.names if n not in columns]
    if missing:
        raise InvalidInput(f"online write of view {view.name!r} lacks feature(s) {missing}; it needs all of {list(lay.names)}")
    fixed = np.zeros(rows, dtype=lay.fixed)
    fixed["version"] = FORMAT_VERSION
    fixed["event_ts"] = event_ts
    fixed["created_ts"] = created_ts
    fixed["fingerprint"] = lay.fingerprint
    nulls = np.zeros((rows, len(lay.names)), dtype=bool)
    strings: list[list[bytes]] = []
    for i, (name, dt) in enumerate(zip(lay.names, lay.dtypes)):
        values, mask = _column(view, name, dt, columns[name], rows)
        nulls[:, i] = mask
        if dt == "string":
            enc = [b"" if m else v.encode("utf-8") for v, m in zip(values, mask)]
            fixed[f"f{i}"] = [len(b) for b in enc]
            strings.append(enc)
        else:
            fixed[f"f{i}"] = np.where(mask, np.zeros(1, dtype=values.dtype), values)
    if rows:
        fixed["nulls"] = np.packbits(nulls, axis=1, bitorder="little")[:, : lay.bitmap_bytes]
    buf = fixed.tobytes()
    size = lay.fixed_size
    if not strings:
        return [buf[r * size : (r + 1) * size] for r in range(rows)]
    return [b"".join((buf[r * size : (r + 1) * size], *(s[r] for s in strings))) for r in range(rows)]


@dataclass
class Decoded:
    found: np.ndarray  # bool per row: a blob of the current schema was there
    event_ts: np.ndarray  # int64 (0 where not found)
    created_ts: np.ndarray
    values: dict[str, np.ndarray]
    nulls: dict[str, np.ndarray]


def empty_column(dt: str, rows: int) -> np.ndarray:
    if dt == "string":
        return np.full(rows, None, dtype=object)
    return np.full(rows, _FILL[dt], dtype=DTYPES[dt])


def decode(view: FeatureView, blobs: list) -> Decoded:
    """Decode the blobs (bytes, or None where the entity had none) of one view's entities."""
    lay = layout(view)
    rows = len(blobs)
    size = lay.fixed_size
    ok = [i for i, b in enumerate(blobs) if b is not None and len(b) >= size and b[0] == FORMAT_VERSION]
    fixed = np.frombuffer(b"".join(blobs[i][:size] for i in ok), dtype=lay.fixed)
    good = fixed["fingerprint"] == lay.fingerprint
    if not good.all():
        ok = [i for i, g in zip(ok, good) if g]
        fixed = fixed[good]
    idx = np.asarray(ok, dtype=np.intp)
    found = np.zeros(rows, dtype=bool)
    found[idx] = True
    ev = np.zeros(rows, dtype=np.int64)
    cr = np.zeros(rows, dtype=np.int64)
    ev[idx] = fixed["event_ts"]
    cr[idx] = fixed["created_ts"]
    null_bits = np.unpackbits(fixed["nulls"], axis=1, count=len(lay.names), bitorder="little").astype(bool) if len(idx) else None
    values: dict[str, np.ndarray] = {}
    nulls: dict[str, np.ndarray] = {}
    offsets = np.full(len(idx), size, dtype=np.int64)
    every = len(idx) == rows and rows > 0  # the common case: every entity found, in request order
    if every:
        by_feature = np.ascontiguousarray(null_bits.T)  # one row of null flags per feature
        any_null = by_feature.any(axis=1).tolist()
    for i, (name, dt) in enumerate(zip(lay.names, lay.dtypes)):
        if every and dt != "string":
            # straight from the slots, without the scatter into a filled column
            m = by_feature[i]
            slot = fixed[f"f{i}"]
            col = slot.astype(DTYPES[dt]) if dt != "bool" else slot != 0
            if any_null[i]:
                col[m] = _FILL[dt]
            values[name] = col
            nulls[name] = m
            continue
        col = empty_column(dt, rows)
        mask = np.ones(rows, dtype=bool)
        if len(idx):
            m = null_bits[:, i]
            mask[idx] = m
            slot = fixed[f"f{i}"]
            if dt == "string":
                lengths = slot.astype(np.int64)
                texts = [
                    None if m[j] else blobs[r][offsets[j] : offsets[j] + lengths[j]].decode("utf-8") for j, r in enumerate(ok)
                ]
                col[idx] = np.array(texts + [None], dtype=object)[:-1]
                offsets += lengths
            else:
                vals = slot.astype(DTYPES[dt]) if dt != "bool" else slot != 0
                keep = idx[~m]
                col[keep] = vals[~m]
        values[name] = col
        nulls[name] = mask
    return Decoded(found=found, event_ts=ev, created_ts=cr, values=values, nulls=nulls)
