"""The feature benchmark runs end to end (tiny sizes) against the real Redis and SQLite, prints
every figure and ratio, and leaves no keys behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

BENCH = Path(__file__).resolve().parents[1] / "features.py"


def test_feature_benchmark_runs_and_cleans_up():
    before = set(redis.Redis().scan_iter(match="parity_bench_*"))
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--features", "5", "--entities", "7", "--calls", "30", "--no-json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for label in ("ours/redis/1x5", "ours/redis/7x5", "ours/sqlite/1x5", "ours/sqlite/7x5", "raw-mget/1", "raw-mget/7", "ping"):
        line = next(line for line in proc.stdout.splitlines() if line.strip().startswith(label + " "))
        p50, p99 = (float(x) for x in line.split()[1::2])
        assert 0 < p50 <= p99
    assert "ours-redis-1/ping" in proc.stdout
    assert set(redis.Redis().scan_iter(match="parity_bench_*")) == before
