"""The SQL layer on a real SQLite file and a real PostgreSQL server: the same migrations and
queries on both, migrations applied exactly once even by racing processes, rollbacks, and a
database that cannot be reached."""

from __future__ import annotations

import multiprocessing as mp
import socket
import time

import pytest

from parity.errors import ConfigError, Unavailable
from parity.sql import Database
from parity.testing.postgres import temporary_database

MIGRATIONS = [
    """CREATE TABLE items (id {id}, name TEXT NOT NULL UNIQUE, payload {blob}, n {bigint}, x {float});
    CREATE INDEX items_by_n ON items (n);""",
    "ALTER TABLE items ADD COLUMN note TEXT;",
]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sql') / 'meta.db'}"
    else:
        with temporary_database() as u:
            yield u


def test_migrations_apply_once_and_the_same_sql_runs_on_both(url):
    with Database.open(url) as db:
        db.migrate("t", MIGRATIONS)  # possibly already applied by another test of this module
        assert db.migrate("t", MIGRATIONS) == 0
        with db.transaction() as tx:
            tx.execute("DELETE FROM items")
            new = tx.insert("INSERT INTO items (name, payload, n, x, note) VALUES (?, ?, ?, ?, ?)", ("a%b?", b"\x00\xff", 2**40, 0.5, "n"))
            row = tx.one("SELECT id, name, payload, n, x, note FROM items WHERE name = ?", ("a%b?",))
        assert row[0] == new and row[1] == "a%b?" and bytes(row[2]) == b"\x00\xff" and row[3] == 2**40 and row[4] == 0.5


def test_a_failed_transaction_leaves_nothing(url):
    with Database.open(url) as db:
        db.migrate("t", MIGRATIONS)
        with pytest.raises(RuntimeError):
            with db.transaction() as tx:
                tx.execute("INSERT INTO items (name) VALUES (?)", ("rolled-back",))
                raise RuntimeError("boom")
        with db.transaction(write=False) as tx:
            assert tx.one("SELECT COUNT(*) FROM items WHERE name = ?", ("rolled-back",))[0] == 0
        # a unique violation is an error, not a silent overwrite
        with db.transaction() as tx:
            tx.execute("INSERT INTO items (name) VALUES (?)", ("once",))
        with pytest.raises(Exception):
            with db.transaction() as tx:
                tx.execute("INSERT INTO items (name) VALUES (?)", ("once",))


def _migrate_and_count(url: str, start: float, out) -> None:
    while time.time() < start:
        time.sleep(0.001)
    with Database.open(url) as db:
        applied = db.migrate("race", ["CREATE TABLE race_a (id {id}, v TEXT);", "CREATE TABLE race_b (id {id});"])
        for i in range(20):
            db.run(lambda tx: tx.execute("INSERT INTO race_a (v) VALUES (?)", (f"{i}",)))
    out.put(applied)


def test_racing_processes_apply_each_migration_once_and_lose_no_write(url):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start = time.time() + 1.5
    procs = [ctx.Process(target=_migrate_and_count, args=(url, start, out)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    # each migration is its own transaction: one process may apply the first and another the
    # second, but together they apply each exactly once (a migration applied twice would count 2)
    counts = [out.get() for _ in procs]
    assert sum(counts) == 2 and all(0 <= c <= 2 for c in counts), counts
    with Database.open(url) as db:
        with db.transaction(write=False) as tx:
            assert tx.one("SELECT COUNT(*) FROM race_a")[0] == 60
            assert tx.one("SELECT COUNT(*) FROM parity_migrations WHERE component = ?", ("race",))[0] == 2


def test_bad_urls_and_an_unreachable_server():
    with pytest.raises(ConfigError, match="sqlite:/// or postgresql://"):
        Database.open("mysql://x")
    with pytest.raises(ConfigError, match="file path"):
        Database.open("sqlite:///:memory:")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = Database.open(f"postgresql://postgres:secret@127.0.0.1:{port}/x", timeout=2)
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as info:
        db.migrate("t", MIGRATIONS)
    assert time.monotonic() - t0 < 10
    assert "start PostgreSQL" in info.value.message and "secret" not in info.value.message
