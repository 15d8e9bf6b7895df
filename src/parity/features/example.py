"""Synthetic Parquet sources for the example feature repository (`configs/features/example_repo.py`).

    python -m parity.features.example DIR [--seed 0] [--users 200] [--merchants 40] [--transactions 2000]

writes, deterministically for a given seed and sizes:

- ``DIR/users.parquet``: weekly user snapshots -- ``user_id`` (int64), ``event_timestamp``,
  ``created_timestamp``, ``age`` (int64), ``country`` (string), ``signup_days`` (float64),
  ``txn_count_30d`` (int64), ``avg_amount_30d`` (float32);
- ``DIR/merchants.parquet``: weekly merchant snapshots -- ``merchant_id`` (string), ``event_timestamp``,
  ``created_timestamp``, ``category`` (string), ``risk_score`` (float64, some NaN),
  ``refund_rate`` (float64), ``daily_volume`` (float64);
- ``DIR/transactions.parquet``: an entity frame with request values -- ``user_id``,
  ``merchant_id``, ``event_timestamp``, ``amount`` (float64), ``hour`` (int64), ``is_fraud`` (bool).

Timestamps are ``timestamp[us, tz=UTC]``.  A few snapshots repeat an event time with a later
``created_timestamp`` (a correction: the row created last wins), some values sit exactly on the
example's bucket edges, and the strings include non-ASCII text, so the sources exercise the
point-in-time join and the kernels' edge cases.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

COUNTRIES = ["US", "GB", "DE", "FR", "JP", "BR", "IN", "CA", "Côte d'Ivoire", "日本", ""]
CATEGORIES = ["grocery", "travel", "electronics", "fuel", "restaurants", "café & bar", "jeux vidéo", "digital"]
START = np.datetime64("2026-01-01T00:00:00", "us")
DAY_US = 86_400_000_000

_TS = pa.timestamp("us", tz="UTC")


def _ts(us_since_start: np.ndarray) -> pa.Array:
    return pa.array((START.astype(np.int64) + us_since_start.astype(np.int64)), type=pa.int64()).cast(_TS)


def _snapshots(rng: np.random.Generator, n_entities: int, days: int):
    """(entity index, event µs, created µs): a weekly snapshot per entity (jittered by up to a day,
    the first one within the first day), some skipped, and a few corrections."""
    weeks = days // 7 + 1
    ent = np.repeat(np.arange(n_entities), weeks)
    week = np.tile(np.arange(weeks), n_entities)
    keep = (week == 0) | (rng.random(len(ent)) < 0.85)
    ent, week = ent[keep], week[keep]
    event = (week * 7 * 86_400 + rng.integers(0, 86_400, size=len(ent))) * 1_000_000  # whole seconds
    created = event + rng.integers(0, 3_600, size=len(ent)) * 1_000_000
    # corrections: the same entity and event time, created later
    fix = rng.random(len(ent)) < 0.05
    ent = np.concatenate([ent, ent[fix]])
    event = np.concatenate([event, event[fix]])
    created = np.concatenate([created, created[fix] + 60_000_000])
    order = np.lexsort((created, event, ent))
    return ent[order], event[order], created[order]


def users_table(seed: int = 0, n_users: int = 200, days: int = 60) -> pa.Table:
    rng = np.random.default_rng([seed, 1])
    ent, event, created = _snapshots(rng, n_users, days)
    n = len(ent)
    age = rng.integers(16, 90, size=n)
    age[rng.random(n) < 0.05] = 25  # on a bucket edge
    signup = rng.gamma(2.0, 400.0, size=n)
    signup[rng.random(n) < 0.02] = -1.0  # bad data, clipped by the view
    return pa.table(
        {
            "user_id": pa.array(1000 + ent, pa.int64()),
            "event_timestamp": _ts(event),
            "created_timestamp": _ts(created),
            "age": pa.array(age, pa.int64()),
            "country": pa.array([COUNTRIES[i] for i in rng.integers(0, len(COUNTRIES), size=n)], pa.string()),
            "signup_days": pa.array(signup, pa.float64()),
            "txn_count_30d": pa.array(rng.poisson(20, size=n), pa.int64()),
            "avg_amount_30d": pa.array(rng.lognormal(3.5, 0.8, size=n).astype(np.float32), pa.float32()),
        }
    )


def merchants_table(seed: int = 0, n_merchants: int = 40, days: int = 60) -> pa.Table:
    rng = np.random.default_rng([seed, 2])
    ent, event, created = _snapshots(rng, n_merchants, days)
    n = len(ent)
    risk = rng.beta(1.5, 6.0, size=n) * 1.2 - 0.05  # a little outside [0, 1]: clipped
    risk[rng.random(n) < 0.05] = np.nan
    return pa.table(
        {
            "merchant_id": pa.array([f"m-{i:04d}" for i in ent], pa.string()),
            "event_timestamp": _ts(event),
            "created_timestamp": _ts(created),
            "category": pa.array([CATEGORIES[i] for i in rng.integers(0, len(CATEGORIES), size=n)], pa.string()),
            "risk_score": pa.array(risk, pa.float64()),
            "refund_rate": pa.array(rng.beta(1.0, 20.0, size=n), pa.float64()),
            "daily_volume": pa.array(rng.lognormal(8.0, 1.5, size=n), pa.float64()),
        }
    )


def transactions_table(seed: int = 0, n_users: int = 200, n_merchants: int = 40, n: int = 2000, days: int = 60) -> pa.Table:
    rng = np.random.default_rng([seed, 3])
    event = np.sort(rng.integers(86_400, days * 86_400, size=n)) * 1_000_000  # from day 1 on
    amount = rng.lognormal(3.5, 1.0, size=n)
    hour = rng.integers(0, 24, size=n)
    return pa.table(
        {
            "user_id": pa.array(1000 + rng.integers(0, n_users + 5, size=n), pa.int64()),  # a few unknown users
            "merchant_id": pa.array([f"m-{i:04d}" for i in rng.integers(0, n_merchants, size=n)], pa.string()),
            "event_timestamp": _ts(event),
            "amount": pa.array(amount, pa.float64()),
            "hour": pa.array(hour, pa.int64()),
            # fraud is likelier for large amounts and at night: a signal the on-demand features carry
            "is_fraud": pa.array(rng.random(n) < 1.0 / (1.0 + np.exp(3.2 - 1.8 * (np.log(amount) - 3.5) - 1.5 * (hour < 6))), pa.bool_()),
        }
    )


def generate(directory: str | Path, seed: int = 0, n_users: int = 200, n_merchants: int = 40, n_transactions: int = 2000) -> dict[str, Path]:
    """Write the example's Parquet sources into `directory` (created if needed); their paths by name."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tables = {
        "users": users_table(seed, n_users),
        "merchants": merchants_table(seed, n_merchants),
        "transactions": transactions_table(seed, n_users, n_merchants, n_transactions),
    }
    paths = {}
    for name, table in tables.items():
        paths[name] = d / f"{name}.parquet"
        pq.write_table(table, paths[name])
    return paths


def end_history_at(paths: dict[str, Path], end) -> None:
    """Shift every timestamp of the written sources so that the newest event is at `end` (an
    aware datetime): the example then looks like recent history, whose values are within their
    TTL when served now.  Rewritten with Arrow, so NaN values stay NaN."""
    tables = {name: pq.read_table(path) for name, path in paths.items()}
    newest = max(pc.max(t.column("event_timestamp")).as_py() for t in tables.values())
    shift = pa.scalar(end - newest, pa.duration("us"))
    for name, table in tables.items():
        for col in ("event_timestamp", "created_timestamp"):
            if col in table.column_names:
                table = table.set_column(table.column_names.index(col), col, pc.add(table.column(col), shift))
        pq.write_table(table, paths[name])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m parity.features.example", description=__doc__.splitlines()[0])
    ap.add_argument("directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--merchants", type=int, default=40)
    ap.add_argument("--transactions", type=int, default=2000)
    a = ap.parse_args(argv)
    for name, path in generate(a.directory, a.seed, a.users, a.merchants, a.transactions).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
