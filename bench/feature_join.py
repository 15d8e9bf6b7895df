"""Feature-joined inference against plain-tensor inference, on MLP-32 and a real Redis.

    python bench/feature_join.py                      # full run (about two minutes)
    python bench/feature_join.py --quick              # a smoke run

One server process serves two models built from the same ONNX file (bench/models.py's MLP-32):

- `mlp32`: the plain model; perf_analyzer sends the FP32 [1, 32] tensor (random data);
- `mlp32_features`: the same file with `features: {service: mlp32}` in its config; perf_analyzer
  sends only `user_id` INT64 [1, 1] (entity ids cycled from a JSON file of ids that exist), and
  the server reads the 32 stored features of each batch's entities from Redis (one round trip per
  batch), assembles the input and runs the model.

The features (one view of 32 float32 features per user) are materialized into the Redis on
127.0.0.1:6379 under a throwaway key prefix, removed at the end.  Alongside, the feature read
alone is timed in-process (`FeatureServer.get_online_features` for one entity, what a client
would call to fetch the features itself).  The issue's goal: feature-joined inference adds no
more than the feature read itself, i.e. p50(joined) - p50(plain) <= p50(read).

Shared machines drift between perf_analyzer runs, so each concurrency level is measured in
`--rounds` rounds (default 3), plain and joined back to back in alternating order (plain first,
then joined first, ...), with the in-process read timed in each round at concurrency 1.  The
table takes the median over rounds of each p50 and of each throughput; each round's own figures
are printed under it and kept in the JSON.

Prints a table and writes bench/results/feature-join-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.models import build_repository  # noqa: E402
from bench.perf import Measurement, Target, run_perf  # noqa: E402

WIDTH = 32

REPO_MODULE = '''
from parity.features.definitions import Entity, FeatureService, FeatureView, Field, FileSource

user = Entity("user", join_keys=(Field("user_id", "int64"),))
profile = FeatureView(
    name="profile",
    entities=("user",),
    source=FileSource({source!r}, timestamp_field="event_timestamp"),
    schema=tuple(Field(f"f{{i}}", "float32") for i in range({width})),
    ttl_seconds=0,
)
mlp32 = FeatureService("mlp32", features=("profile:*",))
'''


def log(message: str) -> None:
    print(f"[feature-join] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_features(work: Path, entities: int) -> Path:
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user_id": np.arange(entities, dtype=np.int64)})
    frame["event_timestamp"] = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)
    for i in range(WIDTH):
        frame[f"f{i}"] = rng.standard_normal(entities).astype(np.float32)
    source = work / "profile.parquet"
    frame.to_parquet(source, index=False)
    module = work / "bench_repo.py"
    module.write_text(REPO_MODULE.format(source=str(source), width=WIDTH))
    return module


def materialize(module: Path, url: str) -> None:
    from parity.features.definitions import FeatureRepository
    from parity.features.materialize import materialize as run
    from parity.features.online import open_online_store

    repo = FeatureRepository.load(module)
    with open_online_store(url) as store:
        for r in run(repo, store, progress=False):
            log(f"materialized {r.view}: {r.rows} entities in {r.seconds:.1f}s")


def time_feature_read(module: Path, url: str, entities: int, calls: int) -> dict:
    from parity.features.definitions import FeatureRepository
    from parity.features.online import open_online_store
    from parity.features.retrieval import FeatureServer

    repo = FeatureRepository.load(module)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, entities, calls + 100)
    with open_online_store(url) as store:
        server = FeatureServer(repo, store)
        samples = []
        for i, uid in enumerate(ids):
            key = np.array([uid], dtype=np.int64)
            t = time.perf_counter_ns()
            got = server.get_online_features("mlp32", {"user_id": key})
            elapsed = time.perf_counter_ns() - t
            if i >= 100:
                samples.append(elapsed / 1000)
            assert got.rows == 1
    samples.sort()
    return {"calls": calls, "p50_us": statistics.median(samples), "p99_us": samples[int(len(samples) * 0.99) - 1]}


def model_repository(work: Path) -> Path:
    models = work / "models"
    build_repository(models, models=["mlp32"], max_batch_size=64)
    joined = models / "mlp32_features"
    shutil.copytree(models / "mlp32", joined)
    config = yaml.safe_load((joined / "config.yaml").read_text())
    config["name"] = "mlp32_features"
    config["features"] = {"service": "mlp32"}
    (joined / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return models


def input_data(work: Path, entities: int, n: int = 2000) -> Path:
    rng = np.random.default_rng(2)
    data = [{"user_id": {"content": [int(u)], "shape": [1]}} for u in rng.integers(0, entities, n)]
    path = work / "entity-ids.json"
    path.write_text(json.dumps({"data": data}))
    return path


def start_server(models: Path, module: Path, url: str, work: Path) -> tuple[subprocess.Popen, Target]:
    http, grpc = free_port(), free_port()
    logfile = open(work / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "parity", "serve", "--model-repository", str(models), "--host", "127.0.0.1",
         "--http-port", str(http), "--grpc-port", str(grpc), "--feature-repository", str(module), "--online-store", url],
        stdout=logfile, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )  # fmt: skip
    proc.log_file = logfile  # closed with the server
    target = Target("parity", http_port=http, grpc_port=grpc, pid=proc.pid)
    deadline = time.monotonic() + 120
    while not target.is_ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the server did not start:\n{(work / 'server.log').read_text()[-3000:]}")
        time.sleep(0.1)
    return proc, target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entities", type=int, default=10_000, help="users with stored features")
    ap.add_argument("--concurrency", default="1,16", help="perf_analyzer concurrency levels, comma separated")
    ap.add_argument("--protocol", default="grpc", choices=("grpc", "http"))
    ap.add_argument("--read-calls", type=int, default=3000, help="in-process feature reads timed per round")
    ap.add_argument("--rounds", type=int, default=None, help="plain/joined pairs per concurrency level, in alternating order (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run, not a measurement")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="the Redis to use (a throwaway key prefix is added)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="directory for the JSON result")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    measurement = Measurement(request_count=200 if args.quick else 2000, max_trials=4 if args.quick else 10)
    if args.quick:
        args.entities, args.read_calls = min(args.entities, 500), min(args.read_calls, 200)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")

    prefix = f"benchjoin_{uuid.uuid4().hex[:10]}"
    url = f"{args.redis}?prefix={prefix}&timeout=2"
    work = Path(tempfile.mkdtemp(prefix="parity-feature-join-"))
    proc = None
    results: dict = {"entities": args.entities, "features": WIDTH, "protocol": args.protocol, "runs": []}
    try:
        log(f"writing {args.entities} users x {WIDTH} features and materializing them into Redis (prefix {prefix})")
        module = write_features(work, args.entities)
        materialize(module, url)
        models = model_repository(work)
        ids = input_data(work, args.entities)
        proc, target = start_server(models, module, url, work)
        pair = [("mlp32", "random"), ("mlp32_features", str(ids))]
        reads = []
        for c in levels:
            for n in range(args.rounds):
                for model, data in pair if n % 2 == 0 else pair[::-1]:
                    log(f"round {n + 1}/{args.rounds}: perf_analyzer {args.protocol} concurrency {c}: {model}")
                    r = run_perf(target, model, protocol=args.protocol, concurrency=c, measurement=measurement, input_data=data)
                    results["runs"].append(dict(r.as_dict(), round=n))
                if c == levels[0]:
                    log(f"round {n + 1}/{args.rounds}: timing {args.read_calls} in-process feature reads of one entity")
                    reads.append(time_feature_read(module, url, args.entities, args.read_calls))
        results["feature_read_rounds"] = reads
        results["feature_read"] = {
            "calls": sum(r["calls"] for r in reads),
            "p50_us": statistics.median(r["p50_us"] for r in reads),
            "p99_us": statistics.median(r["p99_us"] for r in reads),
        }
        stats = target.get_json("/v2/models/mlp32_features/stats")["model_stats"][0]["inference_stats"]
        results["server_stats_joined"] = stats
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
            proc.log_file.close()
        import redis

        with redis.Redis.from_url(args.redis) as r:
            keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
            for i in range(0, len(keys), 500):
                r.delete(*keys[i : i + 500])
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    read = results["feature_read"]
    summary = []
    per_round = []
    for c in levels:

        def median_of(model: str) -> dict:
            runs = [r for r in results["runs"] if r["model"] == model and r["concurrency"] == c]
            return {k: statistics.median(r[k] for r in runs) for k in ("p50_us", "p99_us", "throughput")}

        plain, joined = median_of("mlp32"), median_of("mlp32_features")
        for n in range(args.rounds):
            p, j = (next(r for r in results["runs"] if r["model"] == m and r["concurrency"] == c and r["round"] == n) for m in ("mlp32", "mlp32_features"))
            rr = reads[n]["p50_us"] if c == levels[0] else read["p50_us"]
            per_round.append(f"  concurrency {c}, round {n + 1}: plain {p['p50_us']:.0f} us, joined {j['p50_us']:.0f} us, "
                             f"added {j['p50_us'] - p['p50_us']:+.0f} us, read {rr:.0f} us: {(j['p50_us'] - p['p50_us']) / rr:.2f}")  # fmt: skip
        added = joined["p50_us"] - plain["p50_us"]
        entry = {
            "concurrency": c,
            "plain_p50_us": plain["p50_us"], "plain_p99_us": plain["p99_us"], "plain_per_s": plain["throughput"],
            "joined_p50_us": joined["p50_us"], "joined_p99_us": joined["p99_us"], "joined_per_s": joined["throughput"],
            "added_p50_us": added, "added_over_read": added / read["p50_us"],
            "throughput_ratio": joined["throughput"] / plain["throughput"] if plain["throughput"] else None,
        }  # fmt: skip
        summary.append(entry)
        rows.append(
            f"| {c} | {plain['p50_us']:.0f} / {plain['p99_us']:.0f} | {joined['p50_us']:.0f} / {joined['p99_us']:.0f} | "
            f"{added:+.0f} | {entry['added_over_read']:.2f} | {plain['throughput']:.0f} | {joined['throughput']:.0f} |"
        )
    results["summary"] = summary
    print(f"\nFeature-joined MLP-32 ({WIDTH} features from Redis) vs plain-tensor MLP-32, perf_analyzer {args.protocol}, batch 1")
    print(f"medians of {args.rounds} round(s); in-process feature read of one entity: p50 {read['p50_us']:.0f} us, p99 {read['p99_us']:.0f} us\n")
    print("| concurrency | plain p50 / p99 us | joined p50 / p99 us | added p50 us | added / read | plain infer/s | joined infer/s |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\neach round:\n" + "\n".join(per_round))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"feature-join-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
