"""The online store interface: the newest values of each feature view per entity, for serving.

Values are packed per (view, entity) as described in `parity.features.online.codec`.

Writes keep, per (view, entity), the row with the greatest (event_ts, created_ts), compared
atomically inside the store: an older event never overwrites a newer one, at equal event time the
row created later wins (the offline tie rule), and writing the same row again changes nothing.  A
full tie (equal event AND created time) goes to the row written last, which is offline's "the row
that comes last in the source" when materialization writes a source's rows in order.

TTL rule (`is_expired`), the offline point-in-time join's rule at timestamp `now` (see
`parity.features.offline`: a winner is used iff `event_time >= ts - ttl`, boundary INCLUSIVE, on
microsecond timestamps): with `ttl_us = ttl_us(view)` (round(ttl_seconds * 1e6)) and
`x_us = x_ns // 1000` (nanoseconds floored to microseconds, as offline truncates them), a stored
value is
    EXPIRED  when ttl_us > 0 and event_us < now_us - ttl_us
    PRESENT  otherwise: a value exactly ttl old is still PRESENT.
ttl_seconds == 0 never expires.  `age_ns` is the exact now_ns - event_ns (not rounded).  A value
whose event time is after `now` (a writer's clock ahead of the reader's) is PRESENT with a negative
age: the online store keeps only the newest row, so it cannot return the older row a
point-in-time join at `now` would pick (offline hides rows with event or created time > ts).
Values of EXPIRED and NOT_FOUND entities are null in the result (as offline, where nothing within
TTL joins); their status, and for EXPIRED the age and event time, say why.

Entity keys: a view's key tuple (the join keys of its entities, in order) of int64 and str
components is encoded as a string that holds no ':', '{', '}', whitespace or control character:
each component is `i<decimal>` (int) or `s<UTF-8 percent-encoded>` (str; everything but
A-Z a-z 0-9 _ . - ~ is %XX-escaped), joined by ','.  E.g. (42,) -> "i42", ("a:b", 7) -> "sa%3Ab,i7".
Backends use that string as the entity's id (Redis: in the key's hash tag).
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from enum import IntEnum
from urllib.parse import quote

import numpy as np

from parity.errors import InvalidInput
from parity.features.definitions import FeatureView
from parity.features.online import codec

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class Status(IntEnum):
    PRESENT = 0
    NOT_FOUND = 1
    EXPIRED = 2


def ttl_us(view: FeatureView) -> int:
    """The view's TTL in integer microseconds (0: never expires) -- the same number the offline join
    uses (`int(round(ttl_seconds * 1e6))`)."""
    return round(view.ttl_seconds * 1_000_000)


def is_expired(event_ts: np.ndarray, now_ns: int, ttl: int) -> np.ndarray:
    """The TTL rule (see the module docstring), vectorised over int64 ns event times, with `ttl` in
    microseconds: expired iff ttl > 0 and event_us < now_us - ttl, where x_us = x_ns // 1000 (the
    offline join's microsecond timestamps).  Exact at the int64 extremes."""
    ev = np.asarray(event_ts, dtype=np.int64)
    if ttl <= 0:
        return np.zeros(ev.shape, dtype=bool)
    threshold = int(now_ns) // 1000 - int(ttl)  # in us; ev // 1000 is within int64/1000, no overflow
    if threshold <= _INT64_MIN // 1000:
        return np.zeros(ev.shape, dtype=bool)
    if threshold > _INT64_MAX // 1000:
        return np.ones(ev.shape, dtype=bool)
    return (ev // 1000) < np.int64(threshold)


def relay(done, build):
    """A reply callback for the request path's reads (`fn(reply, None)` or `fn(None, error)`):
    hands `build(reply)` to `done` as `done(result, None)`, or the read's error, or what `build`
    raised, as `done(None, error)`."""

    def reply(got, error) -> None:
        if error is None:
            try:
                result = build(got)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                error = e
            else:
                done(result, None)
                return
        done(None, error)

    return reply


def is_expired_one(event_ts: int, now_ns: int, ttl: int) -> bool:
    """`is_expired` for one event time (Python ints: exact at the int64 extremes without the
    clamps, since Python's // floors as numpy's does)."""
    return ttl > 0 and event_ts // 1000 < now_ns // 1000 - ttl


def age_ns(event_ts: np.ndarray, now_ns: int) -> np.ndarray:
    """now - event_ts per value, saturated to the int64 range."""
    ev = np.asarray(event_ts, dtype=np.int64)
    if not ev.size:
        return np.zeros(0, dtype=np.int64)
    now = int(now_ns)
    if 0 <= now <= _INT64_MAX and (int(ev[0]) if ev.size == 1 else ev.min()) >= 0:
        return now - ev  # in [now - INT64_MAX, now]: no overflow; int64, as now fits int64
    lo, hi = now - int(ev.max()), now - int(ev.min())
    if _INT64_MIN <= lo and hi <= _INT64_MAX:
        return np.int64(now) - ev
    return np.array([min(max(now - int(e), _INT64_MIN), _INT64_MAX) for e in ev], dtype=np.int64)


def check_view_name(view: FeatureView) -> str:
    if not isinstance(view, FeatureView):
        raise InvalidInput(f"expected a FeatureView, got {type(view).__name__}")
    if not _NAME.match(view.name):
        raise InvalidInput(f"feature view name {view.name!r} is not a valid name")
    return view.name


def _component(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        raise InvalidInput(f"entity key component {v!r} is a bool; keys are int64 or string")
    if isinstance(v, (int, np.integer)):
        iv = int(v)
        if not _INT64_MIN <= iv <= _INT64_MAX:
            raise InvalidInput(f"entity key component {v!r} does not fit int64")
        return f"i{iv}"
    if isinstance(v, str):
        return "s" + quote(v, safe="")
    raise InvalidInput(f"entity key component {v!r} is a {type(v).__name__}; keys are int64 or string")


def entity_ids(keys) -> list[str]:
    """Encode entity keys: a list of key tuples (or of scalars, for one-key views), a numpy array
    of one key column, or a dict key name -> numpy column (several keys, in the view's key order)."""
    if isinstance(keys, dict):
        cols = [np.asarray(c) if isinstance(c, np.ndarray) else list(c) for c in keys.values()]
        if len({len(c) for c in cols}) > 1:
            raise InvalidInput(f"entity key columns have different lengths {[len(c) for c in cols]}")
        rows: Iterable = zip(*cols)
    elif isinstance(keys, np.ndarray):
        if keys.ndim == 1 and keys.dtype.kind in "iu" and keys.dtype != np.uint64:
            return [f"i{v}" for v in keys.tolist()]  # fast path: one int key column
        if keys.ndim == 1:
            rows = ((k,) for k in keys.tolist())
        elif keys.ndim == 2:
            rows = (tuple(r) for r in keys.tolist())
        else:
            raise InvalidInput(f"entity keys array has shape {list(keys.shape)}; expected 1 or 2 dimensions")
    else:
        rows = (k if isinstance(k, tuple) else (k,) for k in keys)
    out = []
    if isinstance(keys, list) and all(type(k) is int and _INT64_MIN <= k <= _INT64_MAX for k in keys):
        return [f"i{k}" for k in keys]  # fast path: a list of int keys
    for k in rows:
        if not k:
            raise InvalidInput("an entity key tuple is empty")
        out.append(",".join(_component(c) for c in k))
    return out


def _ts(name: str, ts, rows: int) -> np.ndarray:
    arr = np.asarray(ts)
    if arr.ndim == 0:
        arr = np.full(rows, arr)
    if arr.shape != (rows,):
        raise InvalidInput(f"online write: {name} has shape {list(arr.shape)}; expected {rows} values")
    if arr.dtype.kind == "M":
        arr = arr.astype("datetime64[ns]").view(np.int64)
    if arr.dtype != np.int64:
        if not np.can_cast(arr.dtype, np.int64, casting="safe"):
            raise InvalidInput(f"online write: {name} must be int64 nanoseconds since the epoch, not {arr.dtype}")
        arr = arr.astype(np.int64)
    return arr


class ViewResult:
    """What one read returned for one view's entities, in the order asked.

    `values` / `nulls` (feature -> column) are built on first use from the decoded blocks
    (`columns`); the columns are views into per-read blocks.  Where no value of the read is null,
    every feature's null column is the same read-only all-False array: copy before modifying."""

    __slots__ = ("view", "_values", "_nulls", "status", "age_ns", "event_ts", "created_ts", "columns")

    def __init__(
        self,
        view: FeatureView,
        values: dict[str, np.ndarray] | None,
        nulls: dict[str, np.ndarray] | None,
        status: np.ndarray,
        age_ns: np.ndarray,
        event_ts: np.ndarray,
        created_ts: np.ndarray,
        columns: codec.Columns | None = None,
    ) -> None:
        self.view = view
        self._values = values  # feature -> column of the declared dtype (nulls filled: see `nulls`)
        self._nulls = nulls  # feature -> bool column, True where the value is null / absent
        self.status = status  # int8 per entity: Status values
        self.age_ns = age_ns  # int64 per entity: now - event_ts (-1 where NOT_FOUND)
        self.event_ts = event_ts  # int64 per entity (0 where NOT_FOUND)
        self.created_ts = created_ts  # int64 per entity (0 where NOT_FOUND)
        self.columns = columns

    @property
    def values(self) -> dict[str, np.ndarray]:
        if self._values is None:
            self._values = self.columns.values()
        return self._values

    @property
    def nulls(self) -> dict[str, np.ndarray]:
        if self._nulls is None:
            self._nulls = self.columns.nulls()
        return self._nulls

    def __repr__(self) -> str:
        return f"ViewResult(view={self.view.name!r}, rows={len(self.status)}, status={self.status.tolist()!r})"

    def masked(self, feature: str) -> np.ma.MaskedArray:
        return np.ma.MaskedArray(self.values[feature], mask=self.nulls[feature])


assert Status.PRESENT == 0  # `build_result` makes an all-PRESENT status with np.zeros


def build_result(view: FeatureView, blobs: list, now_ns: int, ttl: int | None = None) -> ViewResult:
    """Decode one view's blobs and judge them at `now_ns` (`ttl`: `ttl_us(view)`, if known)."""
    c = codec.decode_columns(codec.layout(view), blobs)
    rows = c.rows
    if ttl is None:
        ttl = ttl_us(view)
    found = c.found  # None: every entity found
    expired = None
    if ttl > 0 and rows:
        exp = is_expired(c.event_ts, now_ns, ttl)
        if found is not None:
            exp &= found
        if exp.any():
            expired = exp
    if found is None:
        status = np.zeros(rows, dtype=np.int8)
        if rows == 1:  # Python ints: one numpy call instead of a reduction and a subtraction
            a = int(now_ns) - int(c.event_ts[0])
            age = np.array([min(max(a, _INT64_MIN), _INT64_MAX)], dtype=np.int64)
        else:
            age = age_ns(c.event_ts, now_ns)
    else:
        status = np.where(found, np.int8(Status.PRESENT), np.int8(Status.NOT_FOUND))
        age = np.full(rows, -1, dtype=np.int64)
        age[found] = age_ns(c.event_ts[found], now_ns)
    if expired is not None:
        status[expired] = Status.EXPIRED
        c.null_out(expired)
    return ViewResult(view, None, None, status, age, c.event_ts, c.created_ts, c)


class OnlineStore(ABC):
    """Newest feature values per (view, entity).  Thread-safe; open with `open_online_store`."""

    url: str = ""

    def write(self, view: FeatureView, keys, columns: dict, event_ts, created_ts=None) -> int:
        """Store each entity's row unless the store holds one with a greater-or-equal
        (event_ts, created_ts).  `created_ts` None: 0 for every row.  Returns the number of rows
        sent (not the number that won)."""
        check_view_name(view)
        ids = entity_ids(keys)
        rows = len(ids)
        ev = _ts("event_ts", event_ts, rows)
        cr = _ts("created_ts", 0 if created_ts is None else created_ts, rows)
        blobs = codec.encode(view, columns, ev, cr, rows)
        if rows:
            self._write(view.name, ids, ev, cr, blobs)
        return rows

    def read(self, requests: Sequence[tuple[FeatureView, object]], now_ns: int) -> list[ViewResult]:
        """Read every entity of every (view, keys) request in one round trip; one ViewResult per
        request, in order."""
        if isinstance(now_ns, np.generic):
            now_ns = int(now_ns)
        if not isinstance(now_ns, int):
            raise InvalidInput(f"now_ns must be an int (ns since the epoch), not {type(now_ns).__name__}")
        asked = [(check_view_name(view), view, entity_ids(keys)) for view, keys in requests]
        blobs = self._read([(name, ids) for name, _, ids in asked]) if asked else []
        return [build_result(view, b, now_ns) for (_, view, _), b in zip(asked, blobs)]

    async def read_async(self, requests: Sequence[tuple[FeatureView, object]], now_ns: int) -> list[ViewResult]:
        """`read` for event loops: the same checks and results, the blobs fetched by `_read_async`
        (a worker thread unless the backend has a way that does not block the loop)."""
        if isinstance(now_ns, np.generic):
            now_ns = int(now_ns)
        if not isinstance(now_ns, int):
            raise InvalidInput(f"now_ns must be an int (ns since the epoch), not {type(now_ns).__name__}")
        asked = [(check_view_name(view), view, entity_ids(keys)) for view, keys in requests]
        blobs = await self._read_async([(name, ids) for name, _, ids in asked]) if asked else []
        return [build_result(view, b, now_ns) for (_, view, _), b in zip(asked, blobs)]

    async def _read_async(self, requests: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        return await asyncio.to_thread(self._read, requests)

    async def close_async(self) -> None:
        """Close what this event loop holds of the store (its connection, where it has one)."""

    async def write_async(self, view: FeatureView, keys, columns: dict, event_ts, created_ts=None) -> int:
        return await asyncio.to_thread(self.write, view, keys, columns, event_ts, created_ts)

    @abstractmethod
    def _write(self, view: str, ids: list[str], event_ts: np.ndarray, created_ts: np.ndarray, blobs: list[bytes]) -> None: ...

    @abstractmethod
    def _read(self, requests: list[tuple[str, list[str]]]) -> list[list[bytes | None]]: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
