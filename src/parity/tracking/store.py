"""The tracking tables (component "tracking" of the metadata database), name rules and reads.

Runs are rows of `tracking_runs`; their parameters, metrics (one value per name and step), tags,
dataset versions and artifacts hang off them.  System metrics are metrics whose names start with
`system/` (written by the run's sampler thread only).  A metric value that is NaN is stored as NULL
(SQLite cannot store NaN) and read back as NaN.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from parity.errors import InvalidInput, NotFound
from parity.sql import Database, Tx

STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")
SYSTEM_PREFIX = "system/"
RUN_ID_PREFIX_MIN = 6

MIGRATIONS = [
    """CREATE TABLE tracking_runs (
        id TEXT PRIMARY KEY,
        experiment TEXT NOT NULL,
        name TEXT,
        status TEXT NOT NULL,
        started_at {float} NOT NULL,
        ended_at {float},
        heartbeat_at {float},
        git_commit TEXT,
        git_dirty INTEGER,
        git_diff_sha256 TEXT,
        artifact_root TEXT,
        environment_json TEXT,
        error TEXT
    );
    CREATE INDEX tracking_runs_by_experiment ON tracking_runs (experiment, started_at);
    CREATE INDEX tracking_runs_by_time ON tracking_runs (started_at);
    CREATE TABLE tracking_params (
        run_id TEXT NOT NULL REFERENCES tracking_runs (id),
        key TEXT NOT NULL,
        value_json TEXT NOT NULL,
        PRIMARY KEY (run_id, key)
    );
    CREATE TABLE tracking_metrics (
        run_id TEXT NOT NULL REFERENCES tracking_runs (id),
        key TEXT NOT NULL,
        step {bigint} NOT NULL,
        value {float},
        ts {float} NOT NULL,
        PRIMARY KEY (run_id, key, step)
    );
    CREATE TABLE tracking_tags (
        run_id TEXT NOT NULL REFERENCES tracking_runs (id),
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (run_id, key)
    );
    CREATE TABLE tracking_datasets (
        run_id TEXT NOT NULL REFERENCES tracking_runs (id),
        version_id TEXT NOT NULL,
        role TEXT NOT NULL,
        logged_at {float} NOT NULL,
        PRIMARY KEY (run_id, version_id)
    );
    CREATE TABLE tracking_artifacts (
        run_id TEXT NOT NULL REFERENCES tracking_runs (id),
        name TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size {bigint} NOT NULL,
        logged_at {float} NOT NULL,
        PRIMARY KEY (run_id, name)
    );""",
]

# -- names ------------------------------------------------------------------------------------------

_EXPERIMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/: ]{0,249}")
_ARTIFACT_PART = re.compile(r"[A-Za-z0-9_.\-+ =@,]{1,255}")
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def check_experiment(name: str) -> str:
    if not isinstance(name, str) or not _EXPERIMENT.fullmatch(name):
        raise InvalidInput(
            f"experiment name {name!r} is not valid: use 1-128 letters, digits, '_', '.', '-', starting with a letter or digit"
        )
    return name


def check_key(key: str, what: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key) or key.endswith((" ", "/")) or "//" in key:
        raise InvalidInput(
            f"{what} name {key!r} is not valid: use 1-250 letters, digits, '_', '.', '-', '/', ':' or spaces, "
            "starting with a letter, digit or '_' (no '//', no trailing '/' or space)"
        )
    return key


def check_run_name(name: str | None) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not 1 <= len(name) <= 250 or any(ord(c) < 32 for c in name):
        raise InvalidInput(f"run name {name!r} is not valid: 1-250 printable characters")
    return name


def check_tag_value(key: str, value: Any) -> str:
    value = "" if value is None else str(value)
    if len(value) > 5000:
        raise InvalidInput(f"tag {key!r} is {len(value)} characters long: at most 5000")
    return value


def check_artifact_name(name: str) -> str:
    """A relative '/'-separated path inside the run: no absolute paths, no '.' or '..' parts."""
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or len(name) > 1000 or any(p in ("", ".", "..") or not _ARTIFACT_PART.fullmatch(p) for p in parts):
        raise InvalidInput(
            f"artifact name {name!r} is not valid: a relative path of parts made of letters, digits and '_.-+=@, ' "
            "(no empty, '.' or '..' parts, no leading '/')"
        )
    return name


def param_json(key: str, value: Any) -> str:
    """Parameters keep their JSON type (numbers, strings, booleans, null, lists, dicts); numpy
    scalars become numbers, anything else its str()."""

    def plain(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else str(v)
        if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
            return plain(v.item())
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return str(v)

    text = json.dumps(plain(value), sort_keys=True)
    if len(text) > 20000:
        raise InvalidInput(f"parameter {key!r} is {len(text)} characters as JSON: at most 20000 (log it as an artifact)")
    return text


# -- opening ----------------------------------------------------------------------------------------


def open_db(db: Database | str | None) -> tuple[Database, bool]:
    """(database, whether the caller must close it), with the tracking and data migrations applied."""
    from parity.data.versions import MIGRATIONS as DATA_MIGRATIONS
    from parity.data.versions import migrate_once

    if isinstance(db, Database):
        owned = False
    else:
        from parity.home import default_db_url

        db, owned = Database.open(db or default_db_url()), True
    try:
        migrate_once(db, "data", DATA_MIGRATIONS)
        migrate_once(db, "tracking", MIGRATIONS)
    except BaseException:
        if owned:
            db.close()
        raise
    return db, owned


def resolve_run(tx: Tx, ref: str) -> str:
    """The full id of a run named by its id (32 hex digits) or a unique prefix of at least 6."""
    ref = (ref or "").strip().lower()
    if not ref or any(c not in "0123456789abcdef" for c in ref) or len(ref) > 32:
        raise InvalidInput(f"{ref!r} is not a run id (32 hex digits, or a unique prefix of at least {RUN_ID_PREFIX_MIN})")
    if len(ref) == 32:
        if tx.one("SELECT 1 FROM tracking_runs WHERE id = ?", (ref,)):
            return ref
        raise NotFound(f"no run {ref}; `parity runs list` shows the recorded ones")
    if len(ref) < RUN_ID_PREFIX_MIN:
        raise InvalidInput(f"run id prefix {ref!r} is too short: give at least {RUN_ID_PREFIX_MIN} hex digits")
    rows = tx.all("SELECT id FROM tracking_runs WHERE id LIKE ? ORDER BY id LIMIT 5", (ref + "%",))
    if not rows:
        raise NotFound(f"no run id starts with {ref}; `parity runs list` shows the recorded ones")
    if len(rows) > 1:
        raise InvalidInput(f"run id prefix {ref} is ambiguous ({', '.join(r[0][:10] for r in rows)}...): give more digits")
    return rows[0][0]


# -- reads ------------------------------------------------------------------------------------------

_RUN_COLUMNS = (
    "id, experiment, name, status, started_at, ended_at, heartbeat_at, git_commit, git_dirty, git_diff_sha256, "
    "artifact_root, environment_json, error"
)


def _run_row(row: tuple) -> dict[str, Any]:
    (rid, experiment, name, status, started, ended, heartbeat, commit, dirty, diff_sha, root, env, error) = row
    return {
        "id": rid,
        "experiment": experiment,
        "name": name,
        "status": status,
        "started_at": float(started),
        "ended_at": None if ended is None else float(ended),
        "heartbeat_at": None if heartbeat is None else float(heartbeat),
        "code": {"git_commit": commit, "git_dirty": None if dirty is None else bool(dirty), "git_diff_sha256": diff_sha},
        "artifact_root": root,
        "environment": json.loads(env) if env else {},
        "error": error,
    }


def value_of(v: Any) -> float:
    return math.nan if v is None else float(v)


def list_runs(tx: Tx, experiment: str | None = None, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Runs, newest first, each with its params, tags and final metrics."""
    where, args = [], []
    if experiment is not None:
        where.append("experiment = ?")
        args.append(check_experiment(experiment))
    if status is not None:
        if status.upper() not in STATUSES:
            raise InvalidInput(f"status {status!r} is not one of {', '.join(STATUSES)}")
        where.append("status = ?")
        args.append(status.upper())
    sql = f"SELECT {_RUN_COLUMNS} FROM tracking_runs" + (f" WHERE {' AND '.join(where)}" if where else "")
    sql += " ORDER BY started_at DESC, id"
    if limit:
        sql += " LIMIT ?"
        args.append(int(limit))
    runs = [_run_row(r) for r in tx.all(sql, args)]
    _attach(tx, runs)
    return runs


def load_runs(tx: Tx, ids: Sequence[str]) -> list[dict[str, Any]]:
    """Full runs (params, tags, final metrics, metric summaries, datasets, artifacts) in the order of `ids`."""
    out = []
    for rid in ids:
        row = tx.one(f"SELECT {_RUN_COLUMNS} FROM tracking_runs WHERE id = ?", (rid,))
        if row is None:
            raise NotFound(f"no run {rid}; `parity runs list` shows the recorded ones")
        out.append(_run_row(row))
    _attach(tx, out, full=True)
    return out


def metric_history(tx: Tx, run_id: str, key: str | None = None) -> dict[str, list[tuple[int, float, float]]]:
    """{metric name: [(step, value, timestamp), ...] by step}."""
    sql = "SELECT key, step, value, ts FROM tracking_metrics WHERE run_id = ?"
    args: list[Any] = [run_id]
    if key is not None:
        sql += " AND key = ?"
        args.append(key)
    out: dict[str, list[tuple[int, float, float]]] = {}
    for k, step, value, ts in tx.all(sql + " ORDER BY key, step", args):
        out.setdefault(k, []).append((int(step), value_of(value), float(ts)))
    return out


def _attach(tx: Tx, runs: list[dict[str, Any]], full: bool = False) -> None:
    """Add params, tags, final metrics and datasets (and with `full`, metric summaries and
    artifacts) to run dicts, a few queries per 500 runs."""
    for start in range(0, len(runs), 500):
        chunk = {r["id"]: r for r in runs[start : start + 500]}
        ids = list(chunk)
        marks = ", ".join("?" * len(ids))
        for r in chunk.values():
            r.update(params={}, tags={}, metrics={}, datasets=[])
        for rid, k, v in tx.all(
            f"SELECT run_id, key, value_json FROM tracking_params WHERE run_id IN ({marks}) ORDER BY key", ids
        ):
            chunk[rid]["params"][k] = json.loads(v)
        for rid, k, v in tx.all(f"SELECT run_id, key, value FROM tracking_tags WHERE run_id IN ({marks}) ORDER BY key", ids):
            chunk[rid]["tags"][k] = v
        finals = tx.all(
            "SELECT m.run_id, m.key, m.step, m.value, m.ts FROM tracking_metrics m "
            f"WHERE m.run_id IN ({marks}) "
            "AND m.step = (SELECT MAX(step) FROM tracking_metrics x WHERE x.run_id = m.run_id AND x.key = m.key) "
            "ORDER BY m.key",
            ids,
        )
        for rid, k, step, v, ts in finals:
            if not k.startswith(SYSTEM_PREFIX):
                chunk[rid]["metrics"][k] = value_of(v)
        for rid, v, role in tx.all(
            f"SELECT run_id, version_id, role FROM tracking_datasets WHERE run_id IN ({marks}) ORDER BY logged_at, version_id",
            ids,
        ):
            chunk[rid]["datasets"].append({"id": v, "role": role})
        if not full:
            continue
        stats = {
            (rid, k): (int(n), lo, hi)
            for rid, k, n, lo, hi in tx.all(
                "SELECT run_id, key, COUNT(*), MIN(value), MAX(value) FROM tracking_metrics "
                f"WHERE run_id IN ({marks}) GROUP BY run_id, key",
                ids,
            )
        }
        for r in chunk.values():
            r.update(metric_summary={}, artifacts=[])
        for rid, k, step, v, ts in finals:
            n, lo, hi = stats[(rid, k)]
            chunk[rid]["metric_summary"][k] = {
                "last": value_of(v),
                "step": int(step),
                "timestamp": float(ts),
                "count": n,
                "min": value_of(lo),
                "max": value_of(hi),
            }
        for rid, n, sha, size, t in tx.all(
            f"SELECT run_id, name, sha256, size, logged_at FROM tracking_artifacts WHERE run_id IN ({marks}) ORDER BY name", ids
        ):
            chunk[rid]["artifacts"].append({"name": n, "sha256": sha, "size": int(size), "logged_at": float(t)})


__all__ = [
    "MIGRATIONS",
    "STATUSES",
    "SYSTEM_PREFIX",
    "check_experiment",
    "check_key",
    "check_run_name",
    "check_artifact_name",
    "open_db",
    "resolve_run",
    "list_runs",
    "load_runs",
    "metric_history",
]
