"""The Feast side of bench/features.py: Feast serving the same data from the same Redis.

Runs in Feast's own virtualenv (`bash bench/setup.sh --feast` makes `.venv-feast`; Feast's
dependency pins clash with the project's), never in the project's: it imports nothing from
Parity.  bench/features.py starts it as a subprocess and merges what it writes.

Given the Parquet file the main benchmark wrote (columns `user_id` int64, `event_timestamp`,
`created`, and `f0`..`f{n-1}` float32, one row per entity) it:

1. writes a Feast repository into a temp dir: `feature_store.yaml` (provider local, a file
   registry in the temp dir, the Redis online store at --redis-url's host/port/db, a project
   name of its own, so its keys cannot collide with anyone's), then, through the Python API,
   applies an Entity `user` (join key `user_id`, INT64), a FileSource on the Parquet file, a
   FeatureView `wide` with the n float32 features, and a FeatureService `wide_service`;
2. writes the Parquet rows to the online store with `FeatureStore.write_to_online_store`;
3. reads them back once and checks every value against the Parquet file (the same bits that our
   store serves);
4. for each --entities size n, two rows: `FeatureStore.get_online_features(features=<the feature
   service>, entity_rows=[{"user_id": k} for k in range(n)])` ("feast/<n>x<f>"), and the same call
   followed by `.to_dict()` ("feast-to-dict/<n>x<f>": what a caller does to get at the values);
   with --serve, bench/features.py asks for chunks of timed calls of one row at a time over
   stdin/stdout (so that Feast's rows are interleaved with the other rows of the benchmark and
   see the same background load); without it, each row is timed --calls times after --warmup
   untimed calls;
5. tears the project down (`FeatureStore.teardown()`), deletes any of its keys left in Redis,
   and writes JSON to --out (or stdout):

    {"ok": true, "feast_version": "0.67.0", "project": ..., "figures": {"feast/1x50": {...},
     "feast-to-dict/1x50": {...}, ...}, "checked_values": N, "keys_left": 0}

   (--serve: first {"ok": true, "labels": [...], ...} when ready, then one {"samples": [...]} per
   request, and the closing object without figures).

On any failure it writes {"ok": false, "error": "..."} and exits 1 (2 when Feast cannot be
imported), so the main benchmark can say why and go on.

    .venv-feast/bin/python bench/feast_peer.py --data FILE.parquet --features 50 --entities 1 100 \
        --calls 2000 [--warmup 50] [--redis-url redis://127.0.0.1:6379/0] [--out FILE.json] [--serve]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from urllib.parse import urlparse


def sample(fn, calls: int, warmup: int) -> list[int]:
    """Same method as bench/features.py: `warmup` untimed calls, then one perf_counter_ns sample
    (ns) per call."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - t)
    return out


def stats(samples: list[int]) -> dict:
    import numpy as np

    a = np.asarray(samples, dtype=np.float64)
    return {"p50_ms": float(np.percentile(a, 50)) / 1e6, "p99_ms": float(np.percentile(a, 99)) / 1e6, "calls": len(a)}


def redis_parts(url: str) -> tuple[str, int, int]:
    u = urlparse(url)
    db = int(u.path.lstrip("/") or 0)
    return u.hostname or "127.0.0.1", u.port or 6379, db


def write_repo(tmp: Path, project: str, redis_url: str) -> None:
    host, port, db = redis_parts(redis_url)
    (tmp / "feature_store.yaml").write_text(
        f"project: {project}\n"
        "provider: local\n"
        f"registry: {tmp / 'registry.db'}\n"
        "online_store:\n"
        "  type: redis\n"
        f'  connection_string: "{host}:{port},db={db}"\n'
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n"
    )


class FeastMissing(RuntimeError):
    pass


class Peer:
    """Feast set up on the data (steps 1-3 of the module docstring); `calls` maps each row label
    to its call; `close()` tears it down (step 5)."""

    def __init__(self, data_path: str, n_features: int, entities: list[int], redis_url: str):
        try:
            from importlib.metadata import version

            import numpy as np
            import pandas as pd
            from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, ValueType
            from feast.types import Float32
        except ImportError as e:
            why = f"cannot import Feast in {sys.executable}: {e}"
            raise FeastMissing(f"{why}; install it with: bash bench/setup.sh --feast") from e
        import redis

        data = pd.read_parquet(data_path)
        names = [f"f{i}" for i in range(n_features)]
        missing = [c for c in ["user_id", "event_timestamp", "created", *names] if c not in data.columns]
        if missing:
            raise ValueError(f"{data_path} lacks column(s) {missing}")
        if max(entities) > len(data):
            raise ValueError(f"{data_path} has {len(data)} entities, fewer than --entities {max(entities)}")

        self.project = f"parity_bench_feast_{uuid.uuid4().hex[:10]}"
        host, port, db = redis_parts(redis_url)
        self.redis = redis.Redis(host=host, port=port, db=db)
        self.meta: dict = {"feast_version": version("feast"), "project": self.project, "python": sys.version.split()[0],
                           "numpy": np.__version__, "pandas": pd.__version__}  # fmt: skip
        self.tmp = tempfile.TemporaryDirectory(prefix="feast-peer-")
        tmp = Path(self.tmp.name)
        write_repo(tmp, self.project, redis_url)
        self.store = store = FeatureStore(repo_path=str(tmp))
        try:
            user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
            source = FileSource(name="wide_source", path=str(Path(data_path).resolve()),
                                timestamp_field="event_timestamp", created_timestamp_column="created")  # fmt: skip
            view = FeatureView(name="wide", entities=[user], source=source, online=True,
                               schema=[Field(name=n, dtype=Float32) for n in names])  # fmt: skip
            store.apply([user, source, view, FeatureService(name="wide_service", features=[view])])
            t = time.perf_counter()
            store.write_to_online_store("wide", data)
            self.meta["write_s"] = time.perf_counter() - t
            self.meta["keys_written"] = sum(1 for _ in self.redis.scan_iter(match=f"*{self.project}*", count=1000))
            service = store.get_feature_service("wide_service")  # from the registry, as a client would

            # the values Feast serves are the Parquet file's (float32 bits)
            n_max = max(entities)
            got = store.get_online_features(features=service, entity_rows=[{"user_id": k} for k in range(n_max)]).to_dict()
            by_key = data.set_index("user_id")
            checked = 0
            for n in names:
                want = by_key.loc[list(range(n_max)), n].to_numpy(np.float32)
                have = np.asarray(got[n], dtype=np.float32)
                if not np.array_equal(want.view(np.uint32), have.view(np.uint32)):
                    raise AssertionError(f"Feast served other values for {n}: {have[:5]} ... != {want[:5]} ...")
                checked += len(want)
            self.meta["checked_values"] = checked

            self.calls = {}
            for n in entities:
                rows = [{"user_id": k} for k in range(n)]
                self.calls[f"feast/{n}x{n_features}"] = (
                    lambda rows=rows: store.get_online_features(features=service, entity_rows=rows)
                )
                self.calls[f"feast-to-dict/{n}x{n_features}"] = (
                    lambda rows=rows: store.get_online_features(features=service, entity_rows=rows).to_dict()
                )
        except BaseException:
            self.close()
            raise

    def close(self) -> dict:
        try:
            self.store.teardown()
        except Exception as e:  # noqa: BLE001 - reported, the keys are deleted below anyway
            self.meta["teardown_error"] = f"{type(e).__name__}: {e}"
        # Feast's Redis keys are the serialized entity key followed by the project name
        left = list(self.redis.scan_iter(match=f"*{self.project}*", count=1000))
        if left:
            self.redis.delete(*left)
        self.meta["keys_left"] = len(left)
        self.redis.close()
        self.tmp.cleanup()
        return self.meta


def serve(peer: Peer, proto) -> None:
    """Driven by bench/features.py over stdin/stdout, one JSON object a line: it sends
    {"label": L, "calls": k, "warmup": w} and gets {"samples": [ns, ...]} (k timed calls of row L
    after w untimed ones), and {"quit": true} (or closes stdin) to end."""
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        fn = peer.calls[req["label"]]
        proto.write(json.dumps({"samples": sample(fn, int(req["calls"]), int(req["warmup"]))}) + "\n")
        proto.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the Parquet file bench/features.py wrote")
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--entities", type=int, nargs="+", default=[1, 100])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--out", help="write the JSON here (default: stdout)")
    ap.add_argument("--serve", action="store_true",
                    help="time rows on request over stdin/stdout (how bench/features.py drives it)")
    a = ap.parse_args(argv)
    # the results go to the real stdout; whatever else prints (Feast, its libraries) goes to stderr
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def emit(doc: dict) -> None:
        text = json.dumps(doc) if a.serve else json.dumps(doc, indent=1)
        if a.out and not a.serve:
            Path(a.out).write_text(text)
        else:
            proto.write(text + "\n")
            proto.flush()

    try:
        peer = Peer(a.data, a.features, a.entities, a.redis_url)
    except FeastMissing as e:
        emit({"ok": False, "error": str(e)})
        return 2
    except Exception as e:  # noqa: BLE001 - the main benchmark reports it and goes on
        traceback.print_exc()
        emit({"ok": False, "error": f"Feast setup failed: {type(e).__name__}: {e}"})
        return 1
    rc = 0
    try:
        if a.serve:
            emit({"ok": True, "labels": list(peer.calls), **peer.meta})
            serve(peer, proto)
            figures = {}
        else:
            figures = {}
            for label, fn in peer.calls.items():
                print(f"  {label} ...", file=sys.stderr, flush=True)
                figures[label] = stats(sample(fn, a.calls, a.warmup))
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        emit({"ok": False, "error": f"{type(e).__name__}: {e}"})
        rc = 1
    finally:
        meta = peer.close()
    if rc == 0:
        emit({"ok": True, **meta, **({} if a.serve else {"figures": figures})})
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
