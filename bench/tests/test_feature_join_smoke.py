"""Smoke runs of the feature-joined inference and monitoring-overhead benchmarks (tiny counts, real
Redis, a real server, perf_analyzer): they run end to end and write their result files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import feature_join, monitoring_overhead  # noqa: E402


def test_feature_join_benchmark_runs(tmp_path, capsys):
    assert feature_join.main(["--quick", "--concurrency", "1", "--rounds", "2", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("feature-join-*.json")
    doc = json.loads(result.read_text())
    (row,) = doc["summary"]
    assert row["plain_per_s"] > 0 and row["joined_per_s"] > 0 and doc["feature_read"]["p50_us"] > 0
    # two rounds in alternating order, the read timed in each; the table holds their medians
    assert [(r["round"], r["model"]) for r in doc["runs"]] == [(0, "mlp32"), (0, "mlp32_features"), (1, "mlp32_features"), (1, "mlp32")]
    assert len(doc["feature_read_rounds"]) == 2
    plain = sorted(r["p50_us"] for r in doc["runs"] if r["model"] == "mlp32")
    assert row["plain_p50_us"] == (plain[0] + plain[1]) / 2
    # every joined request found its entity: the server answered them all
    stats = doc["server_stats_joined"]
    assert stats["success"]["count"] > 0 and stats["fail"]["count"] == 0
    assert "added / read" in capsys.readouterr().out


def test_monitoring_overhead_benchmark_runs(tmp_path, capsys):
    assert monitoring_overhead.main(["--quick", "--out", str(tmp_path), "--window-rows", "500"]) == 0
    (result,) = tmp_path.glob("monitoring-overhead-*.json")
    doc = json.loads(result.read_text())
    assert doc["plain_per_s"] > 0 and doc["monitored_per_s"] > 0
    assert doc["monitored_rows"] > 0 and doc["windows_closed"]["count"] >= 1 and doc["monitoring_errors"] == 0
    assert "overhead of monitoring" in capsys.readouterr().out
