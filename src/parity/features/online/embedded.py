"""The default online store: one SQLite file (stdlib sqlite3, WAL mode), no server needed.

Table `online_features(view, entity, event_ts, created_ts, value)`, primary key (view, entity);
`entity` is the encoded key of `base.entity_ids`, `value` the blob of `codec`.  A write is one
`INSERT ... ON CONFLICT DO UPDATE ... WHERE (new event_ts, new created_ts) >= (old ones)` per row,
all rows in one IMMEDIATE transaction, so the newer-wins comparison is done by SQLite atomically,
also against other processes writing the same file.  A read is one SELECT per view, all in one
transaction (one consistent snapshot).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

import numpy as np

from parity.errors import Unavailable
from parity.features.online.base import OnlineStore

# where `sqlite://` (no path) or `EmbeddedOnlineStore()` puts the file
DEFAULT_PATH_ENV = "PARITY_ONLINE_STORE_PATH"
DEFAULT_PATH = "parity_online.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_features (
    view TEXT NOT NULL,
    entity TEXT NOT NULL,
    event_ts INTEGER NOT NULL,
    created_ts INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (view, entity)
) WITHOUT ROWID
"""

_UPSERT = """
INSERT INTO online_features (view, entity, event_ts, created_ts, value) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (view, entity) DO UPDATE SET
    event_ts = excluded.event_ts, created_ts = excluded.created_ts, value = excluded.value
WHERE (excluded.event_ts, excluded.created_ts) >= (online_features.event_ts, online_features.created_ts)
"""

_SELECT = "SELECT entity, value FROM online_features WHERE view = ? AND entity IN (SELECT value FROM json_each(?))"


def default_path() -> str:
    return os.environ.get(DEFAULT_PATH_ENV) or DEFAULT_PATH


class EmbeddedOnlineStore(OnlineStore):
    def __init__(self, path: str | os.PathLike | None = None, timeout: float = 5.0):
        self.path = str(path) if path is not None else default_path()
        self.url = f"sqlite://{os.path.abspath(self.path)}"  # sqlite:///abs/path
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        with self._lock:
            self._connect()

    def _fail(self, e: Exception, what: str) -> Unavailable:
        return Unavailable(
            f"the online store {self.url} could not {what} ({type(e).__name__}: {e}); check that the file's folder exists "
            f"and is writable and that no other process holds a write lock for longer than {self.timeout}s, then retry"
        )

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as e:
            raise self._fail(e, "be opened") from e
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
        except sqlite3.Error as e:
            conn.close()
            raise self._fail(e, "be opened") from e
        self._conn = conn
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def _write(self, view: str, ids: list[str], event_ts: np.ndarray, created_ts: np.ndarray, blobs: list[bytes]) -> None:
        rows = zip([view] * len(ids), ids, event_ts.tolist(), created_ts.tolist(), blobs)
        with self._lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(_UPSERT, rows)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                self._drop()  # reconnect on the next call
                raise self._fail(e, "be written") from e

    def _read(self, requests: list[tuple[str, list[str]]]) -> list[list[bytes | None]]:
        out = []
        with self._lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN")
                try:
                    for view, ids in requests:
                        found = dict(conn.execute(_SELECT, (view, json.dumps(ids))).fetchall())
                        out.append([found.get(i) for i in ids])
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as e:
                self._drop()
                raise self._fail(e, "be read") from e
        return out

    def close(self) -> None:
        with self._lock:
            self._drop()
