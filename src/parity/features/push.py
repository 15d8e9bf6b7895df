"""Push: fresh rows for a feature view, served at once and kept for training.

    from parity.features.push import push
    push(repo, store, "user_profile", {
        "user_id": [1000], "event_timestamp": ["2026-11-27T19:00:00Z"],
        "age": [31], "country": ["de"], "signup_days": [400], "txn_count_30d": [12], "avg_amount_30d": [52.5],
    })

The rows are SOURCE rows -- the view's join keys, its event timestamp, the columns its transform
reads (a view without a transform: its features), optionally its created timestamp and other
columns of the source -- not feature values: the transform runs here, as it does offline.

What a push does, in this order:

1. Checks the rows: the view exists; every join key, the event timestamp and every transform
   input is present, non-null, and of the kind of the source's column (an int column takes
   integers, a float column integers or floats, a string column strings, a bool column booleans;
   an integer must fit the column's width); every column has the same number of values; no
   column is unknown to the source.  Each problem is an `InvalidInput` naming the view and the
   column.  Timestamps are ISO-8601 strings (naive: UTC), numbers of SECONDS since the Unix epoch
   (fractions allowed), datetimes or numpy datetime64 values, kept to the microsecond (the
   offline join's resolution).
2. Converts them to the types of the source's columns, so the push log reads like the source.
   The created timestamp, when the source has one, is the push time (the server's clock, in
   microseconds, strictly increasing from one push of the view to the next) unless the rows bring
   their own; a null created time is the push time too.
3. Under the view's push lock (an `flock` on `<log>/.lock`: pushes to one view are serialized,
   also across worker processes): writes the rows as one Parquet file into the view's push log --
   a temporary file, fsynced -- and runs the view's transform over THAT file with
   `offline.SourceRelation` (the code the offline join and materialization run, so the transform
   sees the same dtypes); a failing transform removes the file and is an `InvalidInput`.  Then the
   file is renamed into place and the directory fsynced: the push is now in the offline log.
4. Writes each pushed entity's winner (the offline rule among the pushed rows:
   `materialize.latest_sql`, `materialize.write_batch`) into the online store, whose
   compare-and-set keeps the newest (event time, created time): a pushed row older than what is
   stored does not replace it.

The push log: `FileSource.push_dir(view)` (default `<source>.push/<view>/` next to the source;
see `FileSource`), files named `<sequence:012d>-<push time us>.parquet`, so name order is push
order.  The offline join and materialization read the source's files and then these, in that
order: a pushed row wins ties (equal event and created time) against the source and against
earlier pushes, as it does online (a later push has a later created time, or, without a created
column, is written later).  So a training set built after a push sees the pushed rows exactly
where the online store serves them, and a re-materialization writes the same values again.

Durability and retries: the log is written (and fsynced) BEFORE the online store, so the online
store never holds a pushed value the offline log lacks.  A push that fails on the online write
(store down: `Unavailable`) or whose answer is lost has its rows in the log; retry it (the same
rows) or run `parity features materialize`, which writes everything in the log (an incremental
run takes a pushed row only if it became available after the watermark: with a created column it
did, at its push time; without one it is available from its event time, perhaps earlier).  A retried push
adds a second file with the same values: with a created column its rows carry the later push
time, so from then on they are the winners -- with the same values -- offline and online alike;
without one they tie with the first copy and, coming later, win the tie, again with the same
values.  Duplicates change no value a training set or the online store returns (they only make
the log larger).  A push with an event time in the future is served at once online (as any
write); offline it is visible only from its event time on.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from parity.errors import ConfigError, InvalidInput, PermissionDenied
from parity.features.definitions import FeatureRepository, FeatureView
from parity.features.materialize import latest_sql, write_batch
from parity.features.offline import SourceRelation, _lit, _source_pattern
from parity.features.online.base import OnlineStore

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LOG_NAME = re.compile(r"^(\d{12})-(\d+)\.parquet$")


@dataclass
class PushResult:
    view: str
    rows: int  # rows pushed (and appended to the offline log)
    entities: int  # entities written to the online store (one winner per entity)
    file: Path | None  # the push log file (None: no rows)
    push_us: int  # the push time, microseconds since the epoch


def push(
    repo: FeatureRepository,
    store: OnlineStore,
    view_name: str,
    columns: dict,
    *,
    now_us: int | None = None,
) -> PushResult:
    """Push source rows `columns` (column name -> values) to feature view `view_name`: see the
    module docstring.  `now_us` (tests): the push time instead of the clock."""
    view = _view(repo, view_name)
    log_dir = view.source.push_dir(view.name)
    if log_dir is None:
        raise InvalidInput(
            f"feature view {view.name!r} cannot take pushes: its source {view.source.path!r} is a glob; "
            "give its FileSource a push_log directory"
        )
    if not isinstance(columns, dict) or not columns:
        raise _bad(view, "'rows' must map each column to its values")
    con = duckdb.connect()  # one connection for the source's schema and the transform
    try:
        con.execute("SET TimeZone='UTC'")
        return _push(repo, store, view, log_dir, columns, now_us, con)
    finally:
        con.close()


def _push(repo, store, view: FeatureView, log_dir: Path, columns: dict, now_us: int | None, con) -> PushResult:
    schema = _source_schema(view, con)
    needed = _needed(repo, view)
    src = view.source
    for col, role in needed.items():
        if col not in columns:
            raise InvalidInput(
                f"push to feature view {view.name!r}: column {col!r} ({role}) is missing; "
                f"the rows need {sorted(needed)}"
                + (f" (and may carry {src.created_timestamp_field!r})" if src.created_timestamp_field else "")
            )
    for col in columns:
        if col not in schema.names:
            raise _bad(view, f"column {col!r} is not a column of its source; the source has {schema.names}")
    lengths = {col: _length(view, col, v) for col, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise _bad(view, f"the columns have different lengths {lengths}; give one value per row in each")
    rows = next(iter(lengths.values()))

    # the source's column types, in the source's column order
    arrays: dict[str, pa.Array] = {}
    ts_cols = {src.timestamp_field, src.created_timestamp_field} - {None}
    for f in schema:
        if f.name not in columns:
            continue
        role = needed.get(f.name, "created timestamp" if f.name == src.created_timestamp_field else "column")
        if f.name in ts_cols:
            arr = _timestamps(view, f.name, columns[f.name], f.type)
        else:
            arr = _typed(view, f.name, columns[f.name], f.type)
        if arr.null_count and f.name in needed and not needed[f.name].startswith("feature"):
            raise _bad(view, f"column {f.name!r} ({role}) has {arr.null_count} null value(s); it needs a value in every row")
        arrays[f.name] = arr
    if not rows:
        return PushResult(view.name, 0, 0, None, 0)

    with _push_lock(log_dir):
        seq, push_us = _next(log_dir, now_us)
        if src.created_timestamp_field is not None:
            created_type = schema.field(src.created_timestamp_field).type
            stamp = pa.array(np.full(rows, push_us, dtype=np.int64)).cast(pa.timestamp("us", tz="UTC")).cast(created_type, safe=False)
            given = arrays.get(src.created_timestamp_field)
            arrays[src.created_timestamp_field] = stamp if given is None else pc.coalesce(given, stamp)
        table = pa.table({name: arrays[name] for name in schema.names if name in arrays})
        name = f"{seq:012d}-{push_us}.parquet"
        final = log_dir / name
        tmp = log_dir / f".{name}.tmp"
        try:
            pq.write_table(table, tmp)
            _fsync(tmp)
            winners = _transformed(repo, view, tmp, con)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.rename(tmp, final)
        _fsync(log_dir)
        # the online write, after the log (so the store never holds what the log lacks), under
        # the lock (so pushes reach the store in the log's order)
        entities = 0
        keys = [k for e in view.entities for k in repo.entities[e].join_keys]
        for batch in winners.to_batches():
            entities += write_batch(store, view, keys, batch)
    return PushResult(view.name, rows, entities, final, push_us)


def authorize_push(core, token: str | None) -> None:
    """The servers' push endpoints take the admin token, as repository load/unload do (a push
    changes what models see): `core.authorize_admin`, with a message about push when the server
    has no token configured."""
    if not getattr(core.config, "admin_token", None):
        raise PermissionDenied(
            "feature push is switched off: start the server with --admin-token (or PARITY_ADMIN_TOKEN) "
            "and send it as 'authorization: Bearer <token>'"
        )
    core.authorize_admin(token)


def check_push_request(view, rows) -> None:
    """Check the shape of a server push request: 'view' a name, 'rows' column -> list."""
    if not isinstance(view, str) or not view:
        raise InvalidInput("'view' must name the feature view to push to")
    if not isinstance(rows, dict) or not rows or not all(isinstance(k, str) and isinstance(v, list) for k, v in rows.items()):
        raise InvalidInput(f"push to feature view {view!r}: 'rows' must be an object of column name -> list of values (one per row)")


# ------------------------------------------------------------------------------------------ checks


def _bad(view: FeatureView, problem: str) -> InvalidInput:
    return InvalidInput(f"push to feature view {view.name!r}: {problem}")


def _view(repo: FeatureRepository, name) -> FeatureView:
    if not isinstance(name, str) or not name:
        raise InvalidInput("push: name the feature view ('view')")
    view = repo.views.get(name)
    if view is None:
        if name in repo.on_demand:
            raise InvalidInput(
                f"push: {name!r} is an on-demand feature view, computed at request time; push to the views it reads instead"
            )
        raise InvalidInput(f"push: unknown feature view {name!r}; the repository has {sorted(repo.views)}")
    return view


def _needed(repo: FeatureRepository, view: FeatureView) -> dict[str, str]:
    """Column -> its role, for the columns every pushed row must have."""
    out = {k.name: "join key" for e in view.entities for k in repo.entities[e].join_keys}
    out[view.source.timestamp_field] = "event timestamp"
    for c in view.input_names if view.transform is not None else view.feature_names:
        out.setdefault(c, "transform input" if view.transform is not None else "feature")
    return out


def _source_schema(view: FeatureView, con) -> pa.Schema:
    """The source's columns as DuckDB reads them (the types the push log is written in)."""
    pattern = _source_pattern(view.source.path)
    try:
        n = con.execute("SELECT count(*) FROM glob(?)", [pattern]).fetchone()[0]
    except duckdb.Error as e:
        raise _bad(view, f"cannot list its source {view.source.path!r}: {e}") from e
    if not n:
        raise InvalidInput(
            f"push to feature view {view.name!r}: its source {view.source.path!r} matches no Parquet file; "
            "a push is written in the source's column types, so the source must exist"
        )
    try:
        return con.execute(f"SELECT * FROM read_parquet({_lit(pattern)}) LIMIT 0").arrow().schema
    except duckdb.Error as e:
        raise _bad(view, f"cannot read the schema of its source {view.source.path!r}: {e}") from e


def _length(view: FeatureView, col: str, values) -> int:
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise _bad(view, f"column {col!r} must be a list of values, one per row")
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise _bad(view, f"column {col!r} must be one-dimensional, not of shape {list(values.shape)}")
    return len(values)


def _kind(t: pa.DataType) -> str | None:
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t)):
        return "string"
    if pa.types.is_null(t):
        return "null"
    return None


_TAKES = {"bool": {"bool"}, "int": {"int"}, "float": {"int", "float"}, "string": {"string"}}
_KIND_NAMES = {"bool": "booleans", "int": "integers", "float": "numbers", "string": "strings"}


def _typed(view: FeatureView, col: str, values, target: pa.DataType) -> pa.Array:
    """A pushed column in the source column's type, or InvalidInput naming the column."""
    want = _kind(target)
    if want is None or want == "null":
        raise _bad(view, f"column {col!r} has type {target} in the source, which push does not support")
    try:
        if isinstance(values, pa.ChunkedArray):
            arr = values.combine_chunks()
        elif isinstance(values, pa.Array):
            arr = values
        elif isinstance(values, np.ndarray) and values.dtype != object:
            arr = pa.array(values)
        else:
            arr = pa.array(list(values))
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as e:
        raise InvalidInput(
            f"push to feature view {view.name!r}: column {col!r} must hold {_KIND_NAMES[want]} (the source's {target} column): {e}"
        ) from e
    got = _kind(arr.type)
    if got != "null" and got not in _TAKES[want]:
        raise InvalidInput(
            f"push to feature view {view.name!r}: column {col!r} is {target} in the source and takes {_KIND_NAMES[want]}; "
            f"the values are {arr.type}"
        )
    try:
        out = arr.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise _bad(view, f"a value of column {col!r} does not fit the source's {target} column: {e}") from e
    if want == "float" and got == "float" and out.type.bit_width < arr.type.bit_width:
        # a narrowing float cast turns a finite value that is too large into inf: refuse it
        wide = arr.fill_null(0).to_numpy(zero_copy_only=False)
        narrow = out.fill_null(0).to_numpy(zero_copy_only=False)
        if (np.isfinite(wide) & ~np.isfinite(narrow)).any():
            raise _bad(view, f"a value of column {col!r} is too large for the source's {target} column")
    return out


def _timestamps(view: FeatureView, col: str, values, target: pa.DataType) -> pa.Array:
    """Timestamps (see the module docstring) -> the source column's timestamp type, through
    int64 microseconds UTC."""
    if not (pa.types.is_timestamp(target) or pa.types.is_date(target)):
        raise _bad(view, f"column {col!r} is {target} in the source, not a timestamp column")
    us: list | np.ndarray
    mask = None
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_pylist()
    if isinstance(values, np.ndarray) and values.dtype.kind == "M":
        mask = np.isnat(values)
        us = values.astype("datetime64[us]").view(np.int64)
    else:
        out = []
        for v in (values.tolist() if isinstance(values, np.ndarray) else values):
            out.append(_one_timestamp(view, col, v))
        mask = np.array([v is None for v in out], dtype=bool)
        us = np.array([0 if v is None else v for v in out], dtype=np.int64)
    arr = pa.array(us, type=pa.int64(), mask=mask).cast(pa.timestamp("us", tz="UTC"))
    try:
        return arr.cast(target, safe=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise _bad(view, f"column {col!r}: cannot store the timestamps as the source's {target}: {e}") from e


_US_LIMIT = 2**63 // 1000  # microseconds whose nanoseconds fit int64 (the online store's times)


def _one_timestamp(view: FeatureView, col: str, v) -> int | None:
    if v is None:
        return None
    try:
        if isinstance(v, (bool, np.bool_)):
            raise TypeError("a boolean is not a time")
        if isinstance(v, (int, np.integer)):
            us = int(v) * 1_000_000
        elif isinstance(v, (float, np.floating)):
            if not np.isfinite(v):
                raise ValueError(f"{v} is not a time")
            us = int(round(float(v) * 1_000_000))
        elif isinstance(v, str):
            t = datetime.fromisoformat(v.strip())
            us = _datetime_us(t)
        elif isinstance(v, datetime):
            us = _datetime_us(v)
        elif isinstance(v, np.datetime64):
            if np.isnat(v):
                return None
            us = int(v.astype("datetime64[us]").astype(np.int64))
        else:
            raise TypeError(f"a {type(v).__name__} is not a time")
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidInput(
            f"push to feature view {view.name!r}: column {col!r} holds {v!r}, which is not a timestamp "
            f"(give ISO-8601 strings, e.g. '2026-11-27T19:00:00Z', or seconds since the epoch): {e}"
        ) from e
    if not -_US_LIMIT < us < _US_LIMIT:
        raise _bad(view, f"column {col!r} holds {v!r}, a time out of range (years 1678 to 2261)")
    return us


def _datetime_us(t: datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return (t - _EPOCH) // timedelta(microseconds=1)


# ------------------------------------------------------------------------------------ the push log


@contextmanager
def _push_lock(log_dir: Path):
    """The view's push lock: an exclusive flock on `<log_dir>/.lock` (it serializes pushes from
    threads and from processes alike).  Creates the directory, and removes temporary files a
    crashed push left behind."""
    created = not log_dir.is_dir()
    log_dir.mkdir(parents=True, exist_ok=True)
    if created:
        try:
            _fsync(log_dir.parent)
        except OSError:
            pass
    fd = os.open(log_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for n in os.listdir(log_dir):
            if n.startswith(".") and n.endswith(".tmp"):
                (log_dir / n).unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)  # releases the lock


def _next(log_dir: Path, now_us: int | None) -> tuple[int, int]:
    """(the next sequence number, the push time): both greater than the last push's."""
    seq, last_us = 0, None
    for n in os.listdir(log_dir):
        m = _LOG_NAME.match(n)
        if m and int(m.group(1)) > seq:
            seq, last_us = int(m.group(1)), int(m.group(2))
    us = time.time_ns() // 1000 if now_us is None else int(now_us)
    if last_us is not None and us <= last_us:
        us = last_us + 1  # a clock that stepped back: push times still increase
    return seq + 1, us


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _transformed(repo: FeatureRepository, view: FeatureView, file: Path, con) -> pa.Table:
    """The winner per entity among the rows of `file`, transformed -- by the offline code."""
    try:
        src = SourceRelation(con, repo, view, 0, files=[str(file)])
    except ConfigError as e:
        raise _bad(view, f"{e.field}: {e.problem}") from e
    return con.execute(latest_sql(src)).arrow()


__all__ = ["PushResult", "authorize_push", "check_push_request", "push"]
