"""Online feature reads against the limit of the store, in one run.

On a real Redis (default 127.0.0.1:6379, a throwaway key prefix, deleted afterwards) and on the
embedded SQLite store, for one view of `--features` float32 features:

- our online API in process (`FeatureServer.get_online_features`), 1 entity and `--entities`
  entities per call;
- the limit: a raw redis-py round trip reading the same keys (one MGET of the packed values,
  nothing decoded), and a PING;

each timed `--calls` times after a warm-up; prints p50 / p99 in ms and the ratios ours / limit,
and writes the figures to bench/results/features-<timestamp>.json.

    python bench/features.py [--features 50] [--entities 100] [--calls 2000] [--redis-url redis://127.0.0.1:6379/0]

(The over-HTTP/gRPC figures, Feast as the peer and feature-joined inference are still to come.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import redis  # noqa: E402

from parity.features.definitions import Entity, FeatureRepository, FeatureService, FeatureView, Field, FileSource  # noqa: E402
from parity.features.online import open_online_store  # noqa: E402
from parity.features.retrieval import FeatureServer  # noqa: E402


def timed(fn, calls: int, warmup: int = 50) -> dict:
    for _ in range(warmup):
        fn()
    samples = np.empty(calls)
    for i in range(calls):
        t = time.perf_counter_ns()
        fn()
        samples[i] = time.perf_counter_ns() - t
    return {"p50_ms": float(np.percentile(samples, 50)) / 1e6, "p99_ms": float(np.percentile(samples, 99)) / 1e6, "calls": calls}


def build(n_features: int, n_entities: int, store) -> tuple[FeatureRepository, FeatureView]:
    user = Entity("user", [Field("user_id", "int64")])
    view = FeatureView(
        "wide", ["user"], FileSource("unused.parquet"), [Field(f"f{i}", "float32") for i in range(n_features)], ttl_seconds=0
    )
    repo = FeatureRepository([user, view, FeatureService("wide_service", ["wide:*"])])
    rng = np.random.default_rng(0)
    keys = np.arange(n_entities, dtype=np.int64)
    cols = {f"f{i}": rng.standard_normal(n_entities).astype(np.float32) for i in range(n_features)}
    now = time.time_ns()
    store.write(view, keys, cols, np.full(n_entities, now - 10**9, np.int64), np.full(n_entities, now - 10**9, np.int64))
    return repo, view


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--entities", type=int, default=100)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--no-json", action="store_true")
    a = ap.parse_args(argv)

    prefix = f"parity_bench_{uuid.uuid4().hex[:10]}"
    results: dict = {"features": a.features, "entities": a.entities, "calls": a.calls, "figures": {}}
    r = redis.Redis.from_url(a.redis_url)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            stores = {
                "redis": open_online_store(f"{a.redis_url}?prefix={prefix}&timeout=2"),
                "sqlite": open_online_store(f"sqlite:///{Path(tmp) / 'bench.db'}"),
            }
            for backend, store in stores.items():
                repo, view = build(a.features, a.entities, store)
                server = FeatureServer(repo, store)
                for n in (1, a.entities):
                    keys = {"user_id": np.arange(n, dtype=np.int64)}
                    label = f"ours/{backend}/{n}x{a.features}"
                    print(f"  {label} ...", file=sys.stderr, flush=True)
                    results["figures"][label] = timed(lambda: server.get_online_features("wide_service", keys), a.calls)
                store.close()
            # the limit: the same keys read raw, and a bare round trip
            for n in (1, a.entities):
                keys = [f"{prefix}:{{i{k}}}:wide" for k in range(n)]
                results["figures"][f"raw-mget/{n}"] = timed(lambda: r.mget(keys), a.calls)
            results["figures"]["ping"] = timed(r.ping, a.calls)
    finally:
        ks = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        if ks:
            r.delete(*ks)
        r.close()

    f = results["figures"]
    print(f"\n== online reads, {a.features} float32 features (p50 / p99 ms) ==")
    for label, v in f.items():
        print(f"  {label:28s} {v['p50_ms']:7.3f} / {v['p99_ms']:7.3f}")
    ratios = {}
    for n in (1, a.entities):
        ours, raw = f[f"ours/redis/{n}x{a.features}"], f[f"raw-mget/{n}"]
        ratios[f"ours-redis/raw-mget/{n}"] = ours["p50_ms"] / raw["p50_ms"]
    ratios["ours-redis-1/ping"] = f[f"ours/redis/1x{a.features}"]["p50_ms"] / f["ping"]["p50_ms"]
    results["ratios"] = ratios
    print("\n== ratios (p50; 1.0 is the limit) ==")
    for k, v in ratios.items():
        print(f"  {k:28s} {v:6.2f}x")
    if not a.no_json:
        out = Path(a.results_dir) / f"features-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
