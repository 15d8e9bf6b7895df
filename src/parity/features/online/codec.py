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
read decodes the fixed part of all entities at once: the prefixes are joined into one buffer and
viewed as a (rows, prefix size) byte matrix, and the value slots of all the features of one dtype
are cast out of it together (`Layout.groups`: one gather and one copy per dtype, whatever the number
of features), giving a (features, rows) block whose rows are the feature columns.  Only the string
bytes are walked in Python.  The null bitmap is unpacked only when some bit in it is set.  The Redis
compare-and-set script reads event_ts and created_ts at their fixed offsets (1 and 9).  A blob whose
version or fingerprint does not match the view as it is defined now (the schema changed since it
was written) reads as NOT_FOUND until it is rewritten.
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


@dataclass(frozen=True, eq=False)
class Group:
    """The features of one dtype, decoded together: their slots are gathered out of the byte matrix
    of the fixed prefixes in one step (a slice when they are adjacent) and cast in one copy."""

    dtype: str  # the declared dtype ("string": the u4 length slots of the string features)
    features: tuple[int, ...]  # schema indices, ascending
    names: tuple[str, ...]
    index: np.ndarray  # `features` as an intp array (to pick their rows of the null matrix)
    span: tuple[int, int] | None  # (first byte, end) of the slots when they are adjacent
    byte_index: np.ndarray | None  # otherwise the slots' byte positions, in feature order
    wire: np.dtype  # the slot's dtype (little-endian)
    out: np.dtype  # the column's dtype
    fill: object  # the value under a null


@dataclass(frozen=True, eq=False)
class Layout:
    """How one schema's values are packed (see the module docstring), and how a read decodes them
    (decided once per schema)."""

    names: tuple[str, ...]
    dtypes: tuple[str, ...]
    fingerprint: int
    bitmap_bytes: int
    fixed: np.dtype  # the structured dtype of the fixed-size prefix
    strings: tuple[int, ...]  # indices of the string features
    groups: tuple[Group, ...]  # the non-string features, one group per dtype (first appearance order)
    lengths: Group | None  # the string features' length slots
    signature: tuple[tuple[int, bytes], ...]  # (offset, byte) of the version and fingerprint bytes
    signature_bytes: bytes  # the fingerprint as stored (bytes 17..20)
    order: tuple[tuple[int, int], ...]  # per feature in schema order: (group number, row in its block); strings: (-1, k)

    @property
    def fixed_size(self) -> int:
        return self.fixed.itemsize


def _group(dt: str, members: list[tuple[int, str]], offsets: dict[int, int]) -> Group:
    wire = np.dtype(_SLOT[dt])
    starts = [offsets[i] for i, _ in members]
    adjacent = all(b - a == wire.itemsize for a, b in zip(starts, starts[1:]))
    index = np.array([i for i, _ in members], dtype=np.intp)
    index.flags.writeable = False
    byte_index = None
    if not adjacent:
        byte_index = np.array([s + k for s in starts for k in range(wire.itemsize)], dtype=np.intp)
        byte_index.flags.writeable = False
    return Group(
        dtype=dt, features=tuple(i for i, _ in members), names=tuple(n for _, n in members), index=index,
        span=(starts[0], starts[-1] + wire.itemsize) if adjacent else None, byte_index=byte_index, wire=wire,
        out=np.dtype(np.int64) if dt == "string" else DTYPES[dt], fill=_FILL[dt],
    )  # fmt: skip


@lru_cache(maxsize=1024)
def _layout(schema: tuple[tuple[str, str], ...]) -> Layout:
    n = len(schema)
    nb = (n + 7) // 8
    fp = zlib.crc32(",".join(f"{name}:{dt}" for name, dt in schema).encode())
    fields = [("version", "u1"), ("event_ts", "<i8"), ("created_ts", "<i8"), ("fingerprint", "<u4"), ("nulls", "u1", (nb,))]
    fields += [(f"f{i}", _SLOT[dt]) for i, (_, dt) in enumerate(schema)]
    dtype = np.dtype(fields)  # packed: numpy structured dtypes have no padding unless align=True
    offsets = {i: dtype.fields[f"f{i}"][1] for i in range(n)}
    by_dtype: dict[str, list[tuple[int, str]]] = {}
    for i, (name, dt) in enumerate(schema):
        by_dtype.setdefault(dt, []).append((i, name))
    groups = tuple(_group(dt, members, offsets) for dt, members in by_dtype.items() if dt != "string")
    lengths = _group("string", by_dtype["string"], offsets) if "string" in by_dtype else None
    order: list[tuple[int, int]] = [(0, 0)] * n
    for g_no, g in enumerate(groups):
        for k, i in enumerate(g.features):
            order[i] = (g_no, k)
    for k, i in enumerate(lengths.features if lengths else ()):
        order[i] = (-1, k)
    fp_bytes = fp.to_bytes(4, "little")
    signature = ((0, bytes([FORMAT_VERSION])),) + tuple((17 + k, fp_bytes[k : k + 1]) for k in range(4))
    return Layout(
        names=tuple(s[0] for s in schema), dtypes=tuple(s[1] for s in schema), fingerprint=fp, bitmap_bytes=nb,
        fixed=dtype, strings=tuple(i for i, (_, dt) in enumerate(schema) if dt == "string"),
        groups=groups, lengths=lengths, signature=signature, signature_bytes=fp_bytes, order=tuple(order),
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


def empty_column(dt: str, rows: int) -> np.ndarray:
    if dt == "string":
        return np.full(rows, None, dtype=object)
    return np.full(rows, _FILL[dt], dtype=DTYPES[dt])


_NATIVE_LE = np.dtype("<i8") == np.dtype(np.int64)  # little-endian machine: slots are native numbers
_NO_NULLS: dict[int, np.ndarray] = {}


def _no_nulls(rows: int) -> np.ndarray:
    """A read-only all-False column of `rows` values, shared by every read of that many rows."""
    z = _NO_NULLS.get(rows)
    if z is None:
        z = np.frombuffer(bytes(rows), dtype=bool)  # over immutable bytes: it cannot be made writeable again
        if rows <= 65536:
            if len(_NO_NULLS) >= 256:
                _NO_NULLS.clear()
            _NO_NULLS[rows] = z
    return z


class Columns:
    """One view's decoded values for the rows of a read, kept as blocks: per numeric dtype group a
    (features, rows) array whose rows are the feature columns, an object column per string feature,
    and a (features, rows) null matrix (None while nothing is null)."""

    __slots__ = ("layout", "rows", "found", "event_ts", "created_ts", "blocks", "strings", "null_matrix", "_no_nulls")

    def __init__(self, lay: Layout, rows: int, found, event_ts, created_ts, blocks, strings, null_matrix) -> None:
        self.layout = lay
        self.rows = rows
        self.found = found  # bool per row, or None: every row was found
        self.event_ts = event_ts  # int64 per row (0 where not found)
        self.created_ts = created_ts
        self.blocks = blocks  # one (len(group.features), rows) array per `lay.groups`
        self.strings = strings  # one object column per `lay.strings`
        self.null_matrix = null_matrix  # bool (n_features, rows), or None: no value is null
        self._no_nulls = None

    def null_out(self, rows: np.ndarray) -> None:
        """Make every value of the rows where `rows` (bool) is True null."""
        for g, block in zip(self.layout.groups, self.blocks):
            block[:, rows] = g.fill
        for col in self.strings:
            col[rows] = None
        if self.null_matrix is None:
            self.null_matrix = np.zeros((len(self.layout.names), self.rows), dtype=bool)
        self.null_matrix[:, rows] = True

    def value_list(self):
        """The value columns in schema order (rows of the blocks: views, no copies), as a list, or
        as the one block itself when the view has one dtype (iterating it gives the columns)."""
        if len(self.blocks) == 1 and not self.strings:
            return self.blocks[0]
        blocks, strings = self.blocks, self.strings
        return [strings[k] if g < 0 else blocks[g][k] for g, k in self.layout.order]

    def null_list(self) -> list[np.ndarray] | None:
        """The null columns in schema order, or None when no value is null (see `no_nulls`)."""
        return None if self.null_matrix is None else list(self.null_matrix)

    def no_nulls(self) -> np.ndarray:
        """One read-only all-False column, shared by the features of a read without nulls."""
        if self._no_nulls is None:
            self._no_nulls = _no_nulls(self.rows)
        return self._no_nulls

    def values(self) -> dict[str, np.ndarray]:
        return dict(zip(self.layout.names, self.value_list()))

    def nulls(self) -> dict[str, np.ndarray]:
        nl = self.null_list()
        return dict.fromkeys(self.layout.names, self.no_nulls()) if nl is None else dict(zip(self.layout.names, nl))


def _signed(lay: Layout, joined: bytes, m: int) -> bool:
    """Every one of the m prefixes in `joined` has the current version and fingerprint."""
    if m == 1:
        return joined[0] == FORMAT_VERSION and joined[17:21] == lay.signature_bytes
    size = lay.fixed_size
    return all(joined[pos::size] == byte * m for pos, byte in lay.signature)


def _bitmaps_clear(lay: Layout, joined: bytes, m: int) -> bool:
    """No null bit is set in the m prefixes joined in `joined` (bytes compares, no numpy call)."""
    size, start, nb = lay.fixed_size, 21, lay.bitmap_bytes
    if m == 1:
        return joined[start : start + nb].count(0) == nb
    zero = bytes(m)
    return all(joined[k::size] == zero for k in range(start, start + nb))


def _decode_fixed(lay: Layout, raw: np.ndarray, blobs: list, keep_nulls: bool = False, clear: bool = False):
    """Decode the (m, prefix size) byte matrix of m valid prefixes (and the string bytes of the m
    `blobs`): (event_ts, created_ts, blocks, strings, null matrix or None).  `keep_nulls`: always
    make the null matrix; `clear`: the caller knows that no null bit is set."""
    m = len(raw)
    ts = raw[:, 1:17].view("<i8").T  # (2, m): event_ts, created_ts
    ts = ts.copy() if _NATIVE_LE else np.array(ts, dtype=np.int64, order="C")
    null_matrix = None
    if keep_nulls or not clear:
        bitmap = raw[:, 21 : 21 + lay.bitmap_bytes]
        if keep_nulls or bitmap.any():
            bits = np.unpackbits(bitmap, axis=1, count=len(lay.names), bitorder="little")
            null_matrix = np.array(bits.T, dtype=bool, order="C")
    blocks = []
    for g in lay.groups:
        part = raw[:, g.span[0] : g.span[1]] if g.span is not None else raw.take(g.byte_index, axis=1)
        part = part.view(g.wire)  # (m, features)
        if g.dtype == "bool":  # any non-zero byte is True
            block = part.T.copy() != 0
        elif _NATIVE_LE:  # the little-endian slot dtype is the column's dtype: a plain copy (C order)
            block = part.T.copy()
        else:
            block = np.array(part.T, dtype=g.out, order="C")
        if null_matrix is not None:
            block[null_matrix[g.index]] = g.fill
        blocks.append(block)
    strings = []
    g = lay.lengths
    if g is not None:
        part = raw[:, g.span[0] : g.span[1]] if g.span is not None else raw.take(g.byte_index, axis=1)
        lengths = part.view(g.wire).astype(np.int64).tolist()  # per row: the string features' byte lengths
        nulls = null_matrix[g.index].T.tolist() if null_matrix is not None else None
        size = lay.fixed_size
        texts: list[list] = [[None] * m for _ in g.features]
        for j, (blob, lens) in enumerate(zip(blobs, lengths)):
            off = size
            for k, n in enumerate(lens):
                if nulls is None or not nulls[j][k]:
                    texts[k][j] = blob[off : off + n].decode("utf-8")
                off += n
        for t in texts:
            col = np.empty(m, dtype=object)
            col[:] = t
            strings.append(col)
    return ts[0], ts[1], blocks, strings, null_matrix


def decode_columns(lay: Layout, blobs: list) -> Columns:
    """Decode the blobs (bytes, or None where the entity had none) of one view's entities."""
    rows = len(blobs)
    size = lay.fixed_size
    if rows and None not in blobs:  # the common case: every entity found -- no per-row checks in Python
        shortest = min(map(len, blobs))
        if not lay.strings:
            joined = b"".join(blobs) if shortest == size else None
            if joined is not None and len(joined) != rows * size:
                joined = None  # a longer blob (trailing bytes): the general path slices
        else:
            joined = b"".join([b[:size] for b in blobs]) if shortest >= size else None
        if joined is not None and _signed(lay, joined, rows):
            raw = np.frombuffer(joined, dtype=np.uint8).reshape(rows, size)
            clear = _bitmaps_clear(lay, joined, rows)
            ev, cr, blocks, strings, null_matrix = _decode_fixed(lay, raw, blobs, clear=clear)
            return Columns(lay, rows, None, ev, cr, blocks, strings, null_matrix)
    # some entities missing or unreadable: decode the readable ones, then spread them over the rows
    ok = [i for i, b in enumerate(blobs) if b is not None and len(b) >= size and b[0] == FORMAT_VERSION]
    raw = np.frombuffer(b"".join([blobs[i][:size] for i in ok]), dtype=np.uint8).reshape(len(ok), size)
    good = np.ascontiguousarray(raw[:, 17:21]).view("<u4")[:, 0] == lay.fingerprint
    if not good.all():
        ok = [i for i, g in zip(ok, good.tolist()) if g]
        raw = raw[good]
    idx = np.asarray(ok, dtype=np.intp)
    found = np.zeros(rows, dtype=bool)
    found[idx] = True
    m_ev, m_cr, m_blocks, m_strings, m_nulls = _decode_fixed(lay, raw, [blobs[i] for i in ok], keep_nulls=True)
    ev = np.zeros(rows, dtype=np.int64)
    cr = np.zeros(rows, dtype=np.int64)
    ev[idx] = m_ev
    cr[idx] = m_cr
    blocks = []
    for g, b in zip(lay.groups, m_blocks):
        block = np.full((len(g.features), rows), g.fill, dtype=g.out)
        block[:, idx] = b
        blocks.append(block)
    strings = []
    for s in m_strings:
        col = np.full(rows, None, dtype=object)
        col[idx] = s
        strings.append(col)
    null_matrix = np.ones((len(lay.names), rows), dtype=bool)
    null_matrix[:, idx] = m_nulls
    return Columns(lay, rows, found, ev, cr, blocks, strings, null_matrix)


class Direct:
    """Copies some of one view's features straight from its blobs into columns of a 2-D matrix (a
    model's input), with no per-feature columns in between -- for reads where every blob is
    complete.  Decided once per (view, features, columns): the features are split into runs that
    are adjacent both in the blob and in the matrix and share a dtype, each copied in one step.

    `fill` returns None (nothing is decided, the caller decodes the general way) unless every
    blob is there, of the current schema, with no null bit set; otherwise it fills the columns and
    returns the event times (an int for one row, else an int64 array) for the caller's TTL check.
    The values are exactly those of `decode_columns` assigned into the matrix.

    `into`: the dtype of the matrices it will fill, where known.  When every run's stored dtype is
    that dtype (float32 features into a float32 input, say), a one-row fill copies the runs' bytes
    into a matrix of that dtype with no array made in between."""

    __slots__ = ("layout", "runs", "size", "into", "byte_runs")

    def __init__(self, lay: Layout, features: list[int], columns: list[int], into=None):
        if lay.strings and any(lay.dtypes[i] == "string" for i in features):
            raise ValueError("string features cannot be copied into a numeric matrix")
        offsets = [lay.fixed.fields[f"f{i}"][1] for i in features]
        runs: list[list] = []  # [column start, column end, byte start, byte end, wire dtype, bool?]
        for i, col, off in zip(features, columns, offsets):
            dt = lay.dtypes[i]
            wire = np.dtype(_SLOT[dt])
            last = runs[-1] if runs else None
            if last is not None and last[4] == wire and last[1] == col and last[3] == off and last[5] == (dt == "bool"):
                last[1] += 1
                last[3] += wire.itemsize
            else:
                runs.append([col, col + 1, off, off + wire.itemsize, wire, dt == "bool"])
        self.layout = lay
        self.runs = tuple((a, b, s, e, w, flag) for a, b, s, e, w, flag in runs)
        self.size = lay.fixed_size
        self.into = None if into is None else np.dtype(into)
        self.byte_runs = None  # (matrix byte start, end, blob byte start, end) per run
        if self.into is not None and all(w == self.into and not flag for _, _, _, _, w, flag in runs):
            n = self.into.itemsize
            self.byte_runs = tuple((a * n, b * n, s, e) for a, b, s, e, _, _ in runs)

    def fill(self, matrix: np.ndarray, blobs: list):
        lay, size = self.layout, self.size
        rows = len(blobs)
        if rows == 1:
            blob = blobs[0]
            if blob is None or len(blob) != size or blob[0] != FORMAT_VERSION or blob[17:21] != lay.signature_bytes:
                return None
            nb = lay.bitmap_bytes
            if blob[21 : 21 + nb].count(0) != nb:
                return None
            if self.byte_runs is not None and matrix.dtype == self.into and matrix.flags.c_contiguous:
                out = memoryview(matrix).cast("B")
                for x, y, s, e in self.byte_runs:
                    out[x:y] = blob[s:e]
                return int.from_bytes(blob[1:9], "little", signed=True)
            for a, b, s, e, wire, flag in self.runs:
                part = np.frombuffer(blob, dtype=wire, count=b - a, offset=s)
                matrix[0, a:b] = part != 0 if flag else part
            return int.from_bytes(blob[1:9], "little", signed=True)
        if not rows or None in blobs:
            return None
        joined = b"".join(blobs)
        if len(joined) != rows * size or min(map(len, blobs)) != size or not _signed(lay, joined, rows) or not _bitmaps_clear(lay, joined, rows):
            return None
        raw = np.frombuffer(joined, dtype=np.uint8).reshape(rows, size)
        for a, b, s, e, wire, flag in self.runs:
            part = raw[:, s:e].view(wire)
            matrix[:, a:b] = part != 0 if flag else part
        return raw[:, 1:9].view("<i8")[:, 0]


@dataclass
class Decoded:
    found: np.ndarray  # bool per row: a blob of the current schema was there
    event_ts: np.ndarray  # int64 (0 where not found)
    created_ts: np.ndarray
    values: dict[str, np.ndarray]
    nulls: dict[str, np.ndarray]


def decode(view: FeatureView, blobs: list) -> Decoded:
    """Decode the blobs (bytes, or None where the entity had none) of one view's entities, as
    per-feature dicts (`decode_columns` keeps the blocks)."""
    c = decode_columns(layout(view), blobs)
    found = np.ones(c.rows, dtype=bool) if c.found is None else c.found
    return Decoded(found=found, event_ts=c.event_ts, created_ts=c.created_ts, values=c.values(), nulls=c.nulls())
