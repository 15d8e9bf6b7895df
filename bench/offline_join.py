"""Benchmark of the offline point-in-time join (parity.features.offline) against pandas.merge_asof.

    .venv/bin/python bench/offline_join.py --rows 1000000            # ours and pandas
    .venv/bin/python bench/offline_join.py --rows 10000000 --no-pandas

Generates (deterministically, seeded) N entity rows and 3 feature views of N source rows each as
Parquet under --data (reused when already there), then runs each engine in a child process (so
that each peak RSS, from resource.getrusage, is its own) and writes the figures as JSON to
bench/results/offline-join-<rows>-<time>.json.

The views: `a` has a created-timestamp column (10% of its rows arrive late, 0-6 h after their
event time) and a 7-day TTL; `b` has no created column, duplicate event times and a 1-day TTL;
`c` has a numpy transform (run over the whole source before the join) and no TTL.

pandas.merge_asof (by=user_id, direction="backward", allow_exact_matches=True,
tolerance=TTL -- inclusive, like ours) per view, with each source sorted stably by
(event, created) so that among equal event times the last-created row wins, as in ours.  What it
cannot express: late arrivals (a row created after the entity timestamp is NOT excluded by
merge_asof, so on view `a` its answers differ from ours on the rows where a late row would win);
the final tie-break on equal (event, created) is the last row in the sorted source, the same rule
as ours when the source is in file order.  Its time includes reading the Parquet files and the
transform, like ours, and restoring the entity order.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

DAY = 86_400_000_000  # microseconds
T0 = 1_704_067_200_000_000  # 2024-01-01 UTC in us
SPAN = 365 * DAY


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ data


def generate(data: Path, rows: int, seed: int = 7) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data.mkdir(parents=True, exist_ok=True)
    marker = data / f"done-{rows}-{seed}"
    if marker.exists():
        log(f"data: reusing {data}")
        return
    users = max(rows // 20, 1)
    rng = np.random.default_rng(seed)
    ts_type = pa.timestamp("us", tz="UTC")
    for step, name in enumerate(("a", "b", "c"), 1):
        uid = rng.integers(0, users, rows, dtype=np.int64)
        ev = T0 + rng.integers(0, SPAN, rows, dtype=np.int64)
        if name == "b":
            ev = ev - ev % 3_600_000_000  # whole hours: many equal event times
        cols = {"user_id": uid, "event_timestamp": pa.array(ev, ts_type)}
        if name == "a":
            late = rng.random(rows) < 0.1
            cols["created"] = pa.array(ev + np.where(late, rng.integers(0, DAY // 4, rows), 0), ts_type)
            cols["clicks"] = rng.integers(0, 1000, rows, dtype=np.int64)
            cols["spend"] = rng.random(rows)
        elif name == "b":
            cols["score"] = rng.random(rows).astype(np.float32)
        else:
            cols["amount"] = rng.random(rows) * 100
        pq.write_table(pa.table(cols), data / f"{name}.parquet", row_group_size=1 << 20)
        log(f"data: view {name}: {rows} rows written ({step}/4)")
    uid = rng.integers(0, int(users * 1.05), rows, dtype=np.int64)  # ~5% unknown users
    ts = T0 + rng.integers(0, SPAN, rows, dtype=np.int64)
    pq.write_table(pa.table({"user_id": uid, "event_timestamp": pa.array(ts, ts_type), "label": rng.integers(0, 2, rows, dtype=np.int8)}),
                   data / "entities.parquet", row_group_size=1 << 20)  # fmt: skip
    log(f"data: entities: {rows} rows written (4/4)")
    marker.touch()


def repo_for(data: Path):
    from parity.features.definitions import Entity, FeatureRepository, FeatureService, FeatureView, Field, FileSource

    user = Entity("user", (Field("user_id", "int64"),))
    a = FeatureView("a", ("user",), FileSource(str(data / "a.parquet"), created_timestamp_field="created"),
                    (Field("clicks", "int64"), Field("spend", "float64")), ttl_seconds=7 * 86400)  # fmt: skip
    b = FeatureView("b", ("user",), FileSource(str(data / "b.parquet")), (Field("score", "float32"),), ttl_seconds=86400)
    c = FeatureView("c", ("user",), FileSource(str(data / "c.parquet")), (Field("amount_x2", "float64"),),
                    transform=lambda cols: {"amount_x2": cols["amount"] * 2.0}, inputs=("amount",))  # fmt: skip
    svc = FeatureService("bench", ("a:clicks", "a:spend", "b:score", "c:amount_x2"))
    return FeatureRepository([user, a, b, c, svc])


# --------------------------------------------------------------------------------------- engines


def run_ours(data: Path) -> dict:
    from parity.features.offline import get_historical_features

    repo = repo_for(data)
    t = time.perf_counter()
    table = get_historical_features(repo, str(data / "entities.parquet"), "bench", output="arrow")
    wall = time.perf_counter() - t
    return {"rows_out": table.num_rows, "wall_s": wall, "nulls": {c: table.column(c).null_count for c in ("clicks", "score", "amount_x2")},
            "checksum": {c: float(np.nansum(table.column(c).to_numpy(zero_copy_only=False).astype(float))) for c in ("clicks", "score", "amount_x2")}}  # fmt: skip


def run_pandas(data: Path) -> dict:
    import pandas as pd

    t = time.perf_counter()
    ent = pd.read_parquet(data / "entities.parquet")
    ent["__row"] = np.arange(len(ent))
    ent = ent.sort_values("event_timestamp", kind="stable")
    specs = [
        ("a", ["clicks", "spend"], pd.Timedelta(days=7), "created", None),
        ("b", ["score"], pd.Timedelta(days=1), None, None),
        ("c", ["amount"], None, None, lambda df: df.assign(amount_x2=df["amount"] * 2.0).drop(columns="amount")),
    ]
    for name, cols, ttl, created, fn in specs:
        src = pd.read_parquet(data / f"{name}.parquet")
        if fn is not None:
            src = fn(src)
            cols = ["amount_x2"]
        order = ["event_timestamp"] + ([created] if created else [])
        src = src.sort_values(order, kind="stable")[["user_id", "event_timestamp", *cols]]
        ent = pd.merge_asof(
            ent, src, on="event_timestamp", by="user_id", direction="backward", allow_exact_matches=True, tolerance=ttl
        )
    ent = ent.sort_values("__row").reset_index(drop=True)
    wall = time.perf_counter() - t
    return {"rows_out": len(ent), "wall_s": wall, "nulls": {c: int(ent[c].isna().sum()) for c in ("clicks", "score", "amount_x2")},
            "checksum": {c: float(np.nansum(ent[c].to_numpy(dtype=float))) for c in ("clicks", "score", "amount_x2")}}  # fmt: skip


WINDOW_SQL = """
WITH src AS (SELECT user_id, epoch_us(event_timestamp) AS t, file_row_number::BIGINT AS tb, score
             FROM read_parquet('{path}', file_row_number=true)),
u AS (SELECT user_id, __ts AS t, 1 AS isent, __row, NULL::BIGINT AS tb FROM __entity
      UNION ALL SELECT user_id, t, 0, NULL, tb FROM src),
w AS (SELECT __row, t, last_value(tb IGNORE NULLS) OVER (PARTITION BY user_id ORDER BY t, isent, tb
      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS win FROM u)
SELECT w.__row, CASE WHEN s.t >= w.t - 86400000000 THEN s.score END AS score
FROM w LEFT JOIN src s ON s.tb = w.win WHERE w.__row IS NOT NULL ORDER BY w.__row
"""


def run_strategies(data: Path) -> dict:
    """View `b` alone (no created column, 1-day TTL): ours (ASOF JOIN) against a window-function
    formulation (entity and source rows in one sorted stream, the last source row carried
    forward with last_value IGNORE NULLS); both must give the same answer."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from parity.features.offline import get_historical_features

    repo = repo_for(data)
    t = time.perf_counter()
    ours = get_historical_features(repo, str(data / "entities.parquet"), ["b:score"], output="arrow")
    asof_s = time.perf_counter() - t
    t = time.perf_counter()
    con = duckdb.connect()
    e = pq.read_table(data / "entities.parquet")
    con.register("__e_arrow", pa.table({"user_id": e.column("user_id"), "__ts": e.column("event_timestamp").cast(pa.int64()),
                                        "__row": pa.array(np.arange(e.num_rows))}))  # fmt: skip
    con.execute("CREATE TEMP TABLE __entity AS SELECT * FROM __e_arrow")
    win = con.execute(WINDOW_SQL.format(path=data / "b.parquet")).arrow()
    window_s = time.perf_counter() - t
    same = win.column("score").cast(pa.float32()).combine_chunks().equals(ours.column("score").combine_chunks())
    return {"rows_out": ours.num_rows, "wall_s": asof_s, "asof_s": asof_s, "window_s": window_s, "same_answer": bool(same),
            "nulls": {}, "checksum": {}}  # fmt: skip


def child(engine: str, data: Path) -> None:
    res = {"ours": run_ours, "pandas": run_pandas, "strategies": run_strategies}[engine](data)
    res["peak_rss_mib"] = peak_rss_mib()
    res["rows_per_s"] = res["rows_out"] / res["wall_s"]
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument(
        "--data", type=Path, default=None, help="where the generated Parquet files go (default /tmp/parity-offline-bench-<rows>)"
    )
    ap.add_argument("--no-pandas", action="store_true", help="run ours only (for sizes pandas does not hold)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument(
        "--strategies", action="store_true", help="also time ASOF JOIN against a window-function formulation (view b)"
    )
    ap.add_argument("--_child", choices=["ours", "pandas", "strategies"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = args.data or Path(f"/tmp/parity-offline-bench-{args.rows}")
    if args._child:
        child(args._child, data)
        return
    t = time.perf_counter()
    generate(data, args.rows)
    results = {"rows": args.rows, "views": 3, "source_rows_per_view": args.rows, "generate_s": time.perf_counter() - t,
               "cpus": os.cpu_count(), "runs": {}}  # fmt: skip
    engines = ["ours"] + ([] if args.no_pandas else ["pandas"]) + (["strategies"] if args.strategies else [])
    for engine in engines:
        for i in range(args.repeat):
            log(f"{engine}: run {i + 1}/{args.repeat} at {args.rows} rows ...")
            p = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--data", str(data), "--_child", engine],
                               check=False, capture_output=True, text=True)  # fmt: skip
            if p.returncode != 0:
                log(f"{engine}: FAILED (rc {p.returncode}): {p.stderr[-2000:]}")
                results["runs"].setdefault(engine, []).append({"error": p.stderr[-2000:], "rc": p.returncode})
                continue
            res = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
            results["runs"].setdefault(engine, []).append(res)
            extra = (
                f" (ASOF {res['asof_s']:.2f} s, window {res['window_s']:.2f} s, same answer: {res['same_answer']})"
                if engine == "strategies"
                else ""
            )
            log(
                f"{engine}: {res['wall_s']:.2f} s{extra}, peak RSS {res['peak_rss_mib']:.0f} MiB, {res['rows_per_s']:,.0f} rows/s; nulls {res['nulls']}"
            )
    out = ROOT / "bench" / "results" / f"offline-join-{args.rows}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    log(f"results: {out}")


if __name__ == "__main__":
    main()
