"""Per model-version statistics: what ModelStatistics answers and what /metrics exports.

One object per (model, version), kept across reloads of the same version, updated by the
scheduler and the core with plain arithmetic.
"""

from __future__ import annotations

import time

from parity.monitoring.metrics import BATCH_BUCKETS, DURATION_BUCKETS, Family, Histogram

FAILURE_REASONS = ("rejected", "timeout", "bad_input", "internal", "cancelled")


class VersionStats:
    __slots__ = (
        "model", "version", "success_count", "success_ns", "fail_count", "fail_ns", "queue_count",
        "queue_ns", "input_ns", "infer_ns", "output_ns", "compute_count", "inference_count",
        "execution_count", "last_inference_ms", "batch_stats", "failures", "queue_hist",
        "compute_hist", "request_hist", "batch_hist", "pending", "feature_hist", "feature_missing",
    )  # fmt: skip

    def __init__(self, model: str, version: str):
        self.model, self.version = model, version
        self.success_count = self.success_ns = 0
        self.fail_count = self.fail_ns = 0
        self.queue_count = self.queue_ns = 0
        self.compute_count = self.input_ns = self.infer_ns = self.output_ns = 0
        self.inference_count = self.execution_count = 0
        self.last_inference_ms = 0
        # batch size -> [executions, compute_input ns, compute_infer ns, compute_output ns]
        self.batch_stats: dict[int, list[int]] = {}
        self.failures = dict.fromkeys(FAILURE_REASONS, 0)
        self.queue_hist = Histogram()
        self.compute_hist = Histogram()
        self.request_hist = Histogram()
        self.batch_hist = Histogram(BATCH_BUCKETS)
        self.pending = lambda: 0  # replaced by the scheduler that owns the queue
        # Feature-joined models: time per batch reading and assembling features, and the entity
        # rows with missing features by what the service's policy did with them.
        self.feature_hist: Histogram | None = None
        self.feature_missing: dict[str, int] = {}

    def record_features(self, seconds: float, rejected: int, defaulted: int) -> None:
        if self.feature_hist is None:
            self.feature_hist = Histogram()
            self.feature_missing = {"rejected": 0, "defaulted": 0}
        self.feature_hist.observe(seconds)
        if rejected:
            self.feature_missing["rejected"] += rejected
        if defaulted:
            self.feature_missing["defaulted"] += defaulted

    def record_batch(self, n_requests: int, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        self.execution_count += 1
        self.inference_count += rows
        self.compute_count += n_requests
        # Triton reports compute durations per request: each request of a batch "spent" the batch's time.
        self.input_ns += input_ns * n_requests
        self.infer_ns += infer_ns * n_requests
        self.output_ns += output_ns * n_requests
        b = self.batch_stats.get(rows)
        if b is None:
            b = self.batch_stats[rows] = [0, 0, 0, 0]
        b[0] += 1
        b[1] += input_ns
        b[2] += infer_ns
        b[3] += output_ns
        self.compute_hist.observe((input_ns + infer_ns + output_ns) * 1e-9)
        self.batch_hist.observe(rows)
        self.last_inference_ms = int(time.time() * 1000)

    def record_queue(self, seconds: float) -> None:
        self.queue_count += 1
        self.queue_ns += int(seconds * 1e9)
        self.queue_hist.observe(seconds)

    def record_success(self, ns: int) -> None:
        self.success_count += 1
        self.success_ns += ns
        self.request_hist.observe(ns * 1e-9)

    def record_failure(self, reason: str, ns: int) -> None:
        self.fail_count += 1
        self.fail_ns += ns
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def to_dict(self) -> dict:
        """The ModelStatistics shape of the Triton statistics extension (JSON field names)."""

        def dur(count: int, ns: int) -> dict:
            return {"count": count, "ns": ns}

        return {
            "name": self.model,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": dur(self.success_count, self.success_ns),
                "fail": dur(self.fail_count, self.fail_ns),
                "queue": dur(self.queue_count, self.queue_ns),
                "compute_input": dur(self.compute_count, self.input_ns),
                "compute_infer": dur(self.compute_count, self.infer_ns),
                "compute_output": dur(self.compute_count, self.output_ns),
                "cache_hit": dur(0, 0),
                "cache_miss": dur(0, 0),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": dur(b[0], b[1]),
                    "compute_infer": dur(b[0], b[2]),
                    "compute_output": dur(b[0], b[3]),
                }
                for size, b in sorted(self.batch_stats.items())
            ],
        }


def add_statistics(into: dict, other: dict) -> dict:
    """Add another process's statistics of the same model version into `into` (in place)."""
    into["last_inference"] = max(into["last_inference"], other["last_inference"])
    into["inference_count"] += other["inference_count"]
    into["execution_count"] += other["execution_count"]
    for key, d in other["inference_stats"].items():
        mine = into["inference_stats"].setdefault(key, {"count": 0, "ns": 0})
        mine["count"] += d["count"]
        mine["ns"] += d["ns"]
    sizes = {b["batch_size"]: b for b in into["batch_stats"]}
    for b in other["batch_stats"]:
        mine = sizes.get(b["batch_size"])
        if mine is None:
            into["batch_stats"].append(b)
            continue
        for key in ("compute_input", "compute_infer", "compute_output"):
            mine[key]["count"] += b[key]["count"]
            mine[key]["ns"] += b[key]["ns"]
    into["batch_stats"].sort(key=lambda b: b["batch_size"])
    return into


def families(all_stats: list[VersionStats], server_failures: dict[str, int], load_events: dict) -> list[Family]:
    """Prometheus families for every model version (labels: model, version[, reason])."""
    f = {
        "success": Family("parity_request_success_total", "counter", "Requests answered successfully."),
        "failure": Family("parity_request_failure_total", "counter", "Requests that failed, by reason: rejected (queue full or unavailable), timeout, bad_input, internal, cancelled, not_found."),
        "inference": Family("parity_inference_count_total", "counter", "Rows (batch elements) inferred; divided by executions it gives the mean batch size."),
        "execution": Family("parity_execution_count_total", "counter", "Model executions (batches run)."),
        "queue": Family("parity_queue_duration_seconds", "histogram", "Time requests waited in the batch queue."),
        "compute": Family("parity_compute_duration_seconds", "histogram", "Time per batch spent preparing inputs, running the model and splitting outputs."),
        "request": Family("parity_request_duration_seconds", "histogram", "Time from a request's arrival at the core to its answer."),
        "batch": Family("parity_batch_size", "histogram", "Rows per executed batch."),
        "pending": Family("parity_pending_requests", "gauge", "Requests queued and not yet executed."),
        "load": Family("parity_model_load_total", "counter", "Model version load attempts, by result (success, failure) and unloads."),
        "features": Family("parity_feature_fetch_duration_seconds", "histogram", "Feature-joined models: time per batch reading the online store and assembling the model's input."),
        "missing": Family("parity_feature_missing_rows_total", "counter", "Feature-joined models: entity rows whose features were missing, by the service's policy (rejected: the request failed NOT_FOUND; defaulted: declared defaults were used)."),
    }
    for s in all_stats:
        lab = (("model", s.model), ("version", s.version))
        f["success"].add(lab, s.success_count)
        for reason, n in s.failures.items():
            f["failure"].add(lab + (("reason", reason),), n)
        f["inference"].add(lab, s.inference_count)
        f["execution"].add(lab, s.execution_count)
        f["queue"].add(lab, s.queue_hist)
        f["compute"].add(lab, s.compute_hist)
        f["request"].add(lab, s.request_hist)
        f["batch"].add(lab, s.batch_hist)
        f["pending"].add(lab, s.pending())
        if s.feature_hist is not None:
            f["features"].add(lab, s.feature_hist)
            for policy, n in s.feature_missing.items():
                f["missing"].add(lab + (("policy", policy),), n)
    for reason, n in server_failures.items():
        f["failure"].add((("model", ""), ("version", ""), ("reason", reason)), n)
    for (model, version, result), n in load_events.items():
        f["load"].add((("model", model), ("version", version), ("result", result)), n)
    return list(f.values())


__all__ = ["VersionStats", "families", "DURATION_BUCKETS"]
