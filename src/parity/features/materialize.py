"""Materialization: the latest value per entity of each feature view, from its source into the
online store, computed by the same reading and transform code as the offline join.

For a materialization up to `end` (default: now), an entity's value is the winner among the source
rows AVAILABLE at `end` -- event time <= end and created time <= end -- by the offline join's rule
(greatest event time, then created time, then the last row in the source).  That is exactly what a
point-in-time join at timestamp `end` returns, so an online read at `end` and a training row at
`end` agree bit for bit (TTL is applied by both on read, with the same rule).

Incremental runs (`incremental=True`) take only the rows that became available after the view's
watermark (the `end` of its last completed run) and write their winners; the store's newest-wins
writes make the result the same as a full run.  The watermark is saved only when a view is
complete, so an interrupted run is rerun from the same point; re-writing what was already
written changes nothing (writes are idempotent).

A view's source includes its push log (`parity.features.push`: rows pushed to the view, read after
the source's files), so a materialization writes pushed rows too; a pushed row becomes available
at its push time (its created time), so an incremental run after a push picks it up.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np

from parity.errors import InvalidInput
from parity.features.definitions import FeatureRepository, FeatureView, Field
from parity.features.offline import SourceRelation, quote_ident
from parity.features.online.base import OnlineStore

CHUNK_ROWS = 20_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass
class ViewRun:
    view: str
    rows: int
    seconds: float
    start_us: int | None
    end_us: int


class Watermarks:
    """The end of each view's last completed materialization (microseconds), in a JSON file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads(self.path.read_text()).items()}
        except FileNotFoundError:
            return {}

    def save(self, view: str, end_us: int) -> None:
        marks = self.load()
        marks[view] = end_us
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(marks, indent=1, sort_keys=True))
        os.replace(tmp, self.path)  # atomic: a crash leaves the old or the new file


def _to_us(value) -> int:
    """None (now), ns since the epoch, numpy datetime64 (UTC) or an aware datetime -> µs."""
    if value is None:
        return time.time_ns() // 1000
    if isinstance(value, (int, np.integer)):
        return int(value) // 1000
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[us]").astype(np.int64))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidInput("materialize: give start/end as UTC-aware datetimes or ns since the epoch")
        return (value - _EPOCH) // timedelta(microseconds=1)
    raise InvalidInput(f"materialize: cannot read {value!r} as a time")


def materialize(
    repo: FeatureRepository,
    store: OnlineStore,
    views: list[str] | None = None,
    *,
    start=None,
    end=None,
    incremental: bool = False,
    watermarks: Watermarks | None = None,
    progress: bool = True,
) -> list[ViewRun]:
    """Write each view's latest values (available at `end`, and after `start` or the watermark)
    into `store`.  Returns what each view did."""
    names = list(views) if views else sorted(repo.views)
    for n in names:
        if n not in repo.views:
            raise InvalidInput(f"unknown feature view {n!r}; known: {sorted(repo.views)}")
    end_us = _to_us(end)
    marks = watermarks.load() if (incremental and watermarks is not None) else {}
    runs = []
    connections = []
    try:
        # Every selected view's source is read and checked (columns, dtypes, transform) before
        # anything is written: a refused source leaves the store and the watermarks untouched.
        prepared = []
        for name in names:
            con = duckdb.connect()
            connections.append(con)
            prepared.append((name, con, SourceRelation(con, repo, repo.views[name], 0)))
        for name, con, src in prepared:
            lo = marks.get(name) if incremental else (None if start is None else _to_us(start))
            t0 = time.monotonic()
            rows = _materialize_view(con, src, store, lo, end_us, progress)
            runs.append(ViewRun(name, rows, time.monotonic() - t0, lo, end_us))
            if watermarks is not None:
                watermarks.save(name, end_us)
    finally:
        for con in connections:
            con.close()
    return runs


def latest_sql(src: SourceRelation, cond: str | None = None) -> str:
    """The winner per entity among the rows of `src` that meet `cond` (all rows: None), by the
    offline rule: greatest event time, then created time, then the last row in the source.
    Columns: keys..., __ev, __cr (us), features...  Materialization and push both write what this
    selects."""
    keys = ", ".join(quote_ident(k.name) for k in src.keys)
    feats = ", ".join(quote_ident(f.name) for f in src.view.schema)
    where = f" WHERE {cond}" if cond else ""
    return (
        f"SELECT {keys}, __ev, __cr, {feats} FROM ("
        f"SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY __ev DESC, __cr DESC, __tb DESC) AS __rn "
        f"FROM {src.name}{where}) WHERE __rn = 1"
    )


def write_batch(store: OnlineStore, view: FeatureView, keys: list[Field], batch) -> int:
    """Write one Arrow batch of `latest_sql`'s rows into the online store (event and created
    times us -> ns); returns the rows written."""
    n = batch.num_rows
    if not n:
        return 0
    key_cols = [batch.column(k.name) for k in keys]
    if len(key_cols) == 1 and keys[0].dtype == "int64":
        key_arg = key_cols[0].to_numpy()
    else:
        key_arg = list(zip(*[c.to_pylist() for c in key_cols]))
    columns = {}
    for f in view.schema:
        col = batch.column(f.name)
        if f.dtype == "string":
            columns[f.name] = np.array(col.to_pylist(), dtype=object)
        elif col.null_count:
            columns[f.name] = np.ma.MaskedArray(
                col.fill_null(False if f.dtype == "bool" else 0).to_numpy(zero_copy_only=False),
                mask=col.is_null().to_numpy(zero_copy_only=False),
            )
        else:
            columns[f.name] = col.to_numpy(zero_copy_only=False)
    ev = batch.column("__ev").to_numpy().astype(np.int64) * 1000
    cr = batch.column("__cr").to_numpy().astype(np.int64) * 1000
    store.write(view, key_arg, columns, ev, cr)
    return n


def _materialize_view(con, src: SourceRelation, store: OnlineStore, lo_us: int | None, end_us: int, progress: bool) -> int:
    view = src.view
    avail = "greatest(__ev, __cr)"
    cond = f"{avail} <= {int(end_us)}" + (f" AND {avail} > {int(lo_us)}" if lo_us is not None else "")
    reader = con.execute(latest_sql(src, cond)).fetch_record_batch(CHUNK_ROWS)
    written = 0
    t0 = time.monotonic()
    for batch in reader:
        if not batch.num_rows:
            continue
        written += write_batch(store, view, src.keys, batch)
        if progress:
            rate = written / max(time.monotonic() - t0, 1e-9)
            print(f"\r  {view.name}: {written:,} entities written ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)
    if progress:
        print(f"\r  {view.name}: {written:,} entities written in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    return written


__all__ = ["ViewRun", "Watermarks", "latest_sql", "materialize", "write_batch"]
