"""The monitoring tap's cost on serving throughput: MLP-32 with and without a reference profile.

    python bench/monitoring_overhead.py [--rounds 3] [--concurrency 16] [--quick]

One server serves two copies of bench/models.py's MLP-32: `mlp32` (no profile: not monitored) and
`mlp32_monitored` (a reference profile of its 32 inputs and its output next to the ONNX file, so
every batch is binned into count and time windows and closed windows are tested in the
background, with the server's default 5,000-row count window).  perf_analyzer (gRPC, one row per request, random
data drawn like the profile's) alternates between the two for `--rounds` rounds; the table shows
each model's median throughput and p50 and the overhead of monitoring (1 - monitored / plain).
The issue's goal: under 3%.  Writes bench/results/monitoring-overhead-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.feature_join import free_port  # noqa: E402
from bench.models import build_repository  # noqa: E402
from bench.perf import Measurement, Target, run_perf  # noqa: E402


def log(message: str) -> None:
    print(f"[monitoring-overhead] {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--window-rows", type=int, default=5000, help="the server's --monitor-window-rows (its default: 5000)")
    ap.add_argument("--quick", action="store_true", help="a smoke run, not a measurement")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    import onnxruntime as ort

    from parity.monitoring.profile import build_profile

    work = Path(tempfile.mkdtemp(prefix="parity-monitoring-bench-"))
    proc = None
    try:
        models = work / "models"
        build_repository(models, models=["mlp32"], max_batch_size=64)
        shutil.copytree(models / "mlp32", models / "mlp32_monitored")
        cfg = (models / "mlp32_monitored" / "config.yaml").read_text().replace("name: mlp32", "name: mlp32_monitored")
        (models / "mlp32_monitored" / "config.yaml").write_text(cfg)
        x = np.random.default_rng(0).random((20_000, 32), dtype=np.float32)  # perf_analyzer's random data is uniform
        sess = ort.InferenceSession(str(models / "mlp32" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        out_name = sess.get_outputs()[0].name
        profile = build_profile({f"x{i}": x[:, i] for i in range(32)}, {out_name: y[:, 0]})
        (models / "mlp32_monitored" / "1" / "profile.json").write_text(json.dumps(profile))

        import subprocess
        import os

        http, grpc_port = free_port(), free_port()
        logf = open(work / "server.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "parity", "serve", "--model-repository", str(models), "--host", "127.0.0.1",
             "--http-port", str(http), "--grpc-port", str(grpc_port), "--monitor-window-rows", str(args.window_rows)],
            stdout=logf, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        )  # fmt: skip
        target = Target("parity", http_port=http, grpc_port=grpc_port, pid=proc.pid)
        deadline = time.monotonic() + 120
        while not target.is_ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((work / "server.log").read_text()[-3000:])
            time.sleep(0.1)
        m = Measurement(request_count=300 if args.quick else 4000, max_trials=3 if args.quick else 8)
        # warm-up: the first closed window calibrates the drift thresholds (a one-time simulation,
        # seconds of CPU); measure the steady state after it
        log("warm-up: closing the first windows (one-time calibration)")
        run_perf(target, "mlp32_monitored", protocol="grpc", concurrency=args.concurrency, measurement=Measurement(request_count=2000, max_trials=3))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            e = next((e for e in target.get_json("/v1/monitoring")["models"] if e["model"] == "mlp32_monitored"), None)
            if e and e["windows_closed"]["count"] >= 1:
                break
            time.sleep(0.5)
        time.sleep(2)
        runs = {"mlp32": [], "mlp32_monitored": []}
        for r in range(1 if args.quick else args.rounds):
            for model in ("mlp32", "mlp32_monitored") if r % 2 == 0 else ("mlp32_monitored", "mlp32"):
                log(f"round {r + 1}: {model}")
                runs[model].append(run_perf(target, model, protocol="grpc", concurrency=args.concurrency, measurement=m).as_dict())
        mon = target.get_json("/v1/monitoring")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
            logf.close()
        shutil.rmtree(work, ignore_errors=True)
    plain = statistics.median(r["throughput"] for r in runs["mlp32"])
    monitored = statistics.median(r["throughput"] for r in runs["mlp32_monitored"])
    entry = next((e for e in mon["models"] if e["model"] == "mlp32_monitored"), {})
    result = {
        "concurrency": args.concurrency, "rounds": len(runs["mlp32"]), "plain_per_s": plain, "monitored_per_s": monitored,
        "overhead": 1 - monitored / plain, "plain_p50_us": statistics.median(r["p50_us"] for r in runs["mlp32"]),
        "monitored_p50_us": statistics.median(r["p50_us"] for r in runs["mlp32_monitored"]),
        "plain_cpu_us_per_request": _median_cpu(runs["mlp32"]), "monitored_cpu_us_per_request": _median_cpu(runs["mlp32_monitored"]),
        "monitored_rows": entry.get("rows"), "windows_closed": entry.get("windows_closed"), "monitoring_errors": entry.get("errors"),
        "runs": runs,
    }  # fmt: skip
    print(f"\nMLP-32, perf_analyzer gRPC concurrency {args.concurrency}, {result['rounds']} alternating rounds (medians)")
    cpu_p, cpu_m = result["plain_cpu_us_per_request"], result["monitored_cpu_us_per_request"]
    print("| model | infer/s | p50 us | server CPU us/request |\n|---|---|---|---|")
    print(f"| not monitored | {plain:.0f} | {result['plain_p50_us']:.0f} | {_fmt(cpu_p)} |")
    print(f"| monitored (profile of 32 inputs + output) | {monitored:.0f} | {result['monitored_p50_us']:.0f} | {_fmt(cpu_m)} |")
    cpu_note = f"; server CPU per request {100 * (cpu_m / cpu_p - 1):+.1f}%" if cpu_p and cpu_m else ""
    print(f"overhead of monitoring: {100 * result['overhead']:.1f}% of throughput (goal < 3%){cpu_note}; rows binned {entry.get('rows')}, "
          f"windows tested {entry.get('windows_closed')}, errors {entry.get('errors')}")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"monitoring-overhead-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


def _median_cpu(runs: list[dict]) -> float | None:
    values = [r["server_cpu_us_per_request"] for r in runs if r.get("server_cpu_us_per_request")]
    return statistics.median(values) if values else None


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


if __name__ == "__main__":
    sys.exit(main())
