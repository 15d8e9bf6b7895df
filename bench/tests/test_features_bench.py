"""The feature benchmark runs end to end (tiny sizes) against the real Redis, SQLite and a real
`parity serve` process, prints every figure and ratio, and leaves no keys behind; the Feast peer's
merge and its "unavailable" path are checked without Feast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from bench import features as fb

BENCH = Path(__file__).resolve().parents[1] / "features.py"


def row(stdout: str, label: str) -> tuple[float, float]:
    line = next((line for line in stdout.splitlines() if line.strip().startswith(label + " ")), None)
    assert line is not None, f"no row {label}:\n{stdout}"
    parts = line.split()
    assert parts[2] == "/", line
    return float(parts[1]), float(parts[3])


def test_feature_benchmark_runs_and_cleans_up(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--features", "5", "--entities", "7", "--calls", "30", "--warmup", "5",
         "--rounds", "3", "--rewarm", "2", "--no-feast", "--results-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    labels = ["ours/redis/1x5", "ours/redis/7x5", "ours/sqlite/1x5", "ours/sqlite/7x5", "raw-mget/1", "raw-mget/7", "ping",
              "raw-socket-mget/1", "raw-socket-mget/7", "raw-socket-ping",
              "http/redis/1x5", "http/redis/7x5", "grpc/redis/1x5", "grpc/redis/7x5"]  # fmt: skip
    for label in labels:
        p50, p99 = row(proc.stdout, label)
        assert 0 < p50 <= p99, proc.stdout
    for ratio in ("ours-redis-1/ping", "ours-redis/raw-mget/7", "ours-redis-1/raw-socket-ping", "ours-redis/raw-socket-mget/7",
                  "http/in-process/1", "http/in-process/7",
                  "grpc/in-process/1", "grpc/in-process/7", "http-1/ping", "grpc-1/ping"):  # fmt: skip
        assert f"  {ratio} " in proc.stdout, proc.stdout
    assert "Feast peer: not run (--no-feast)" in proc.stdout and "feast/" not in proc.stdout, proc.stdout
    (result,) = tmp_path.glob("features-*.json")
    doc = json.loads(result.read_text())
    assert set(doc["figures"]) == set(labels)
    assert doc["figures"]["ours/redis/7x5"]["redis_commands_per_call"] >= 1, proc.stdout
    assert doc["server"]["grpc_transport"] == "fast" and "feast" not in doc
    # its keys (other runs may use the same Redis at the same time: only this run's prefix counts)
    assert doc["redis_prefix"].startswith("parity_bench_")
    assert list(redis.Redis().scan_iter(match=doc["redis_prefix"] + ":*")) == []


def fig(p50: float) -> dict:
    return {"p50_ms": p50, "p99_ms": 2 * p50, "calls": 10}


def results_without_feast() -> dict:
    figures = {"ours/redis/1x50": fig(0.5), "ours/redis/100x50": fig(1.0), "raw-mget/1": fig(0.1), "raw-mget/100": fig(0.2),
               "ping": fig(0.1), "http/redis/1x50": fig(1.0), "grpc/redis/1x50": fig(0.75)}  # fmt: skip
    return {"features": 50, "entities": 100, "calls": 10, "warmup": 1, "figures": figures}


def test_feast_result_is_merged_into_figures_and_ratios():
    results = results_without_feast()
    peer = {"ok": True, "feast_version": fb.FEAST_VERSION, "project": "parity_bench_feast_x", "python": "3.11.7",
            "figures": {"feast/1x50": fig(2.0), "feast/100x50": fig(10.0), "feast-to-dict/1x50": fig(2.5)}}  # fmt: skip
    fb.merge_feast(results, peer)
    results["ratios"] = fb.compute_ratios(results["figures"], 50, 100)
    assert results["figures"]["feast/100x50"]["p50_ms"] == 10.0
    assert results["feast"]["feast_version"] == fb.FEAST_VERSION and "figures" not in results["feast"]
    r = results["ratios"]
    assert r["feast/ours/1"] == 4.0 and r["feast/ours/100"] == 10.0 and r["feast-to-dict/ours/1"] == 5.0
    assert r["feast/ours-http/1"] == 2.0 and r["http/in-process/1"] == 2.0 and r["grpc/in-process/1"] == 1.5
    assert r["ours-redis-1/ping"] == 5.0 and r["ours-redis/raw-mget/100"] == 5.0
    assert "http/in-process/100" not in r  # no figure, no ratio
    text = fb.report(results)
    assert f"Feast peer: feast {fb.FEAST_VERSION}" in text
    assert "  feast/100x50 " in text and "  feast/ours/100 " in text
    assert "notes" not in results


def test_feast_other_version_is_noted():
    results = results_without_feast()
    fb.merge_feast(results, {"ok": True, "feast_version": "0.1.0", "project": "p", "figures": {"feast/1x50": fig(1.0)}})
    results["ratios"] = fb.compute_ratios(results["figures"], 50, 100)
    assert "Feast 0.1.0 ran, not the pinned" in fb.report(results)


def test_feast_missing_virtualenv_is_reported_not_raised(tmp_path):
    with pytest.raises(fb.FeastUnavailable) as exc:
        fb.open_feast_peer(tmp_path / "no-venv" / "bin" / "python", tmp_path / "x.parquet", 50, [1, 100],
                           "redis://127.0.0.1:6379/0", install=False)  # fmt: skip
    assert "no Feast virtualenv at" in str(exc.value) and "bash bench/setup.sh --feast" in str(exc.value)
    results = results_without_feast()
    fb.merge_feast(results, fb.unavailable(str(exc.value)))
    results["ratios"] = fb.compute_ratios(results["figures"], 50, 100)
    assert not any(k.startswith("feast") for k in list(results["figures"]) + list(results["ratios"]))
    text = fb.report(results)
    assert "Feast peer UNAVAILABLE, its rows are missing: no Feast virtualenv at" in text
    assert results["feast"] == {"ok": False, "error": str(exc.value)}


def test_feast_peer_without_feast_says_how_to_install(tmp_path):
    """The peer script in an interpreter without Feast (the project's own), through the same
    subprocess protocol the benchmark uses: a clear error, not a hang or a traceback."""
    with pytest.raises(fb.FeastUnavailable) as exc:
        fb.open_feast_peer(Path(sys.executable), tmp_path / "x.parquet", 50, [1], "redis://127.0.0.1:6379/0", install=False)
    assert "cannot import Feast" in str(exc.value) and "bash bench/setup.sh --feast" in str(exc.value)


def test_rows_are_interleaved_and_a_failing_row_is_dropped():
    order = []

    def row(label, fail=False):
        def run(calls, warmup):
            order.append((label, calls, warmup))
            if fail:
                raise RuntimeError("boom")
            return np.full(calls, 1000 * (1 + len(label)), np.int64)

        return run

    figures, failed = fb.run_rounds({"a": row("a"), "bb": row("bb"), "bad": row("bad", fail=True)}, calls=10, warmup=7,
                                    rewarm=2, rounds=3)  # fmt: skip
    assert failed == {"bad": "RuntimeError: boom"} and set(figures) == {"a", "bb"}
    assert order == [("a", 4, 7), ("bb", 4, 7), ("bad", 4, 7), ("bb", 3, 2), ("a", 3, 2), ("a", 3, 2), ("bb", 3, 2)]
    assert figures["a"]["calls"] == 10 and figures["a"]["p50_ms"] == 0.002 and figures["bb"]["p99_ms"] == 0.003
    assert figures["a"]["p50_ms_round_min"] == figures["a"]["p50_ms_round_max"] == 0.002
