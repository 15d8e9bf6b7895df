"""Runs as JSON-ready dicts: the bodies of GET /v1/runs, /v1/runs/{id} and /v1/runs/compare?ids=a,b.

Pure functions of the database (a `Database` or a URL): they read, never write (beyond applying
the schema migrations), and return plain dicts of str, int, float, bool, None, lists and dicts.
Times are ISO 8601 UTC strings; metric values that are not finite are the strings "NaN",
"Infinity" and "-Infinity" (JSON has no such numbers).  Unknown ids raise `parity.errors.NotFound`
(HTTP 404), malformed ones `InvalidInput` (400).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

from parity.errors import InvalidInput
from parity.sql import Database
from parity.tracking.store import list_runs, load_runs, metric_history, open_db, resolve_run

MAX_COMPARE = 50


def runs_json(
    db: Database | str | None, experiment: str | None = None, status: str | None = None, limit: int | None = 1000
) -> dict[str, Any]:
    """{"runs": [summary, ...]}, newest first; a summary has the run's params, tags, final metrics
    (user metrics, last step), dataset versions and code version."""
    database, owned = open_db(db)
    try:
        runs = database.run(lambda tx: list_runs(tx, experiment, status, limit), write=False)
    finally:
        if owned:
            database.close()
    return {"runs": [_summary(r) for r in runs]}


def run_json(db: Database | str | None, run_id: str, history: bool = True) -> dict[str, Any]:
    """One run in full: summary, environment, artifacts, a summary of every metric (system ones
    included: last, step, min, max, count) and, with `history`, every metric's values by step."""
    database, owned = open_db(db)
    try:

        def read(tx):
            rid = resolve_run(tx, run_id)
            run = load_runs(tx, [rid])[0]
            return run, (metric_history(tx, rid) if history else None)

        run, hist = database.run(read, write=False)
    finally:
        if owned:
            database.close()
    out = _summary(run)
    out["environment"] = run["environment"]
    out["artifact_root"] = run["artifact_root"]
    out["artifacts"] = [{**a, "logged_at": _iso(a["logged_at"])} for a in run["artifacts"]]
    out["metric_summary"] = {
        k: {
            "last": _num(s["last"]),
            "step": s["step"],
            "timestamp": _iso(s["timestamp"]),
            "count": s["count"],
            "min": _num(s["min"]),
            "max": _num(s["max"]),
        }
        for k, s in run["metric_summary"].items()
    }
    if hist is not None:
        out["history"] = {
            k: [{"step": s, "value": _num(v), "timestamp": _iso(t)} for s, v, t in rows] for k, rows in hist.items()
        }
    return out


def compare_json(db: Database | str | None, ids: Sequence[str]) -> dict[str, Any]:
    """Runs side by side: {"runs": [summary, ...], "params": [{"name", "values", "differs"}],
    "metrics": [...]} with one value per run (None where a run lacks it), in the order of `ids`.
    `differs` is True when the runs do not all have the same value."""
    ids = [i for i in ids if i]
    if len(ids) < 2:
        raise InvalidInput("compare needs at least two run ids")
    if len(ids) > MAX_COMPARE:
        raise InvalidInput(f"compare takes at most {MAX_COMPARE} runs, not {len(ids)}")
    database, owned = open_db(db)
    try:

        def read(tx):
            full = [resolve_run(tx, i) for i in ids]
            return load_runs(tx, full)

        runs = database.run(read, write=False)
    finally:
        if owned:
            database.close()
    summaries = [_summary(r) for r in runs]
    return {
        "runs": summaries,
        "params": _side_by_side([s["params"] for s in summaries]),
        "metrics": _side_by_side([s["metrics"] for s in summaries]),
    }


def _side_by_side(maps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = sorted({k for m in maps for k in m})
    rows = []
    for k in keys:
        values = [m.get(k) for m in maps]
        rows.append({"name": k, "values": values, "differs": len({json.dumps(v, sort_keys=True) for v in values}) > 1})
    return rows


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    end = run["ended_at"]
    return {
        "id": run["id"],
        "experiment": run["experiment"],
        "name": run["name"],
        "status": run["status"],
        "started_at": _iso(run["started_at"]),
        "ended_at": _iso(end) if end is not None else None,
        "duration_s": (end if end is not None else time.time()) - run["started_at"],
        "params": run["params"],
        "metrics": {k: _num(v) for k, v in run["metrics"].items()},
        "tags": run["tags"],
        "datasets": run["datasets"],
        "code": run["code"],
        "error": run["error"],
    }


def _num(v: float | None) -> float | str | None:
    if v is None:
        return None
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def _iso(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


__all__ = ["runs_json", "run_json", "compare_json"]
