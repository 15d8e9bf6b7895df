"""Performance monitoring: the prediction log and late labels, rolling metrics, SLO math."""

from __future__ import annotations

import json
import math
from itertools import product

import numpy as np
import pytest

from parity.monitoring import metrics
from parity.monitoring.performance import (
    BurnWindow,
    PredictionLog,
    SloObjective,
    SloTracker,
    binary_metrics,
    burn_rate,
    count_le,
    evaluate_burn,
    histogram_quantile,
    infer_task,
    regression_metrics,
    roc_auc,
)


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- metric math -----------------------------------------------------------------------------------


def _auc_by_pairs(s, y):
    """The definition: P(score_pos > score_neg) + 0.5 P(equal), over every pair."""
    pos = [a for a, b in zip(s, y) if b]
    neg = [a for a, b in zip(s, y) if not b]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_is_exact_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        s = rng.integers(0, 5, size=n).astype(float) / 4  # many ties
        y = rng.integers(0, 2, size=n)
        if y.min() == y.max():
            assert roc_auc(s, y) is None
            continue
        assert roc_auc(s, y) == pytest.approx(_auc_by_pairs(s, y), abs=1e-12)


def test_roc_auc_known_values():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert roc_auc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert roc_auc([0.9, 0.8, 0.1], [0, 0, 1]) == 0.0
    assert roc_auc([0.3, 0.6], [1, 1]) is None


def test_binary_metrics():
    s = np.array([0.9, 0.2, 0.6, 0.4])
    y = np.array([1, 0, 0, 1])
    m = binary_metrics(s, y, threshold=0.5)
    assert m["accuracy"] == pytest.approx(0.5)  # 0.9->1 ok, 0.2->0 ok, 0.6->1 wrong, 0.4->0 wrong
    expected_ll = -np.mean([math.log(0.9), math.log(0.8), math.log(0.4), math.log(0.4)])
    assert m["log_loss"] == pytest.approx(expected_ll)
    assert m["brier"] == pytest.approx(np.mean([0.01, 0.04, 0.36, 0.36]))
    assert m["positive_rate"] == 0.5
    assert m["roc_auc"] == pytest.approx(_auc_by_pairs(s, y))
    assert binary_metrics(s, y, threshold=0.3)["accuracy"] == pytest.approx(0.75)
    # scores of exactly 0 and 1 do not make log loss infinite
    assert math.isfinite(binary_metrics([0.0, 1.0], [1, 0])["log_loss"])
    assert binary_metrics([], []) == {}


def test_regression_metrics():
    p = np.array([1.0, 2.0, 4.0])
    y = np.array([1.0, 3.0, 2.0])
    m = regression_metrics(p, y)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 1 + 4) / 3))
    assert m["mae"] == pytest.approx(1.0)
    assert m["bias"] == pytest.approx((0 - 1 + 2) / 3)
    assert m["r2"] == pytest.approx(1 - 5 / 2)
    assert regression_metrics([1.0, 2.0], [3.0, 3.0])["r2"] is None


def test_infer_task():
    assert infer_task([0.1, 0.9], [0, 1]) == "binary"
    assert infer_task([0.1, 1.5], [0, 1]) == "regression"
    assert infer_task([0.1, 0.9], [0, 2]) == "regression"


# -- the prediction log ----------------------------------------------------------------------------


def test_feedback_joins_late_labels_and_counts_outcomes():
    clock = Clock()
    log = PredictionLog(capacity=1000, ttl_secs=3600, tasks={"fraud": "binary"}, clock=clock)
    assert log.record("r1", "fraud", "1", np.array([0.9, 0.2, 0.7]))
    assert log.record("r2", "fraud", "1", np.array([[0.1], [0.8]]))  # [rows, 1]
    assert log.record("r3", "fraud", "1", np.array([[0.3, 0.7]]))  # two-class probabilities: column 1
    assert not log.record("r1", "fraud", "1", np.array([0.5]))  # an id is recorded once
    clock.t += 1800  # labels come half an hour later
    r = log.feedback("r1", [1, 0, 0])
    assert (r["status"], r["rows"], r["model"], r["version"]) == ("joined", 3, "fraud", "1")
    # partial labels by row index, then the rest
    assert log.feedback("r2", [1], rows=[1])["status"] == "joined"
    r = log.feedback("r2", [0, 1], rows=[0, 1])
    assert (r["status"], r["rows"], r["duplicates"], r["conflicts"]) == ("partial", 1, 1, 0)
    # the same labels again: nothing changes; a different label for a labelled row is refused
    r = log.feedback("r1", [1, 0, 0])
    assert (r["status"], r["rows"], r["duplicates"]) == ("duplicate", 0, 3)
    r = log.feedback("r1", [0, 0, 0])
    assert (r["status"], r["conflicts"]) == ("duplicate", 1)
    assert log.feedback("nope", [1])["status"] == "unknown"
    assert log.feedback("r3", [1, 0])["status"] == "invalid"  # wrong number of labels
    assert log.feedback("r3", [2])["status"] == "invalid"  # binary labels are 0/1
    assert log.feedback("r3", [1], rows=[5])["status"] == "invalid"
    assert log.feedback("r3", ["x"])["status"] == "invalid"
    assert log.feedback("r3", [True])["status"] == "joined"

    m = log.metrics("fraud", "1")
    assert m["task"] == "binary" and m["task_declared"]
    assert m["rows"] == 6 and m["labelled_rows_total"] == 6
    scores = [0.9, 0.2, 0.7, 0.8, 0.1, 0.7]
    labels = [1, 0, 0, 1, 0, 1]
    assert m["metrics"]["roc_auc"] == pytest.approx(_auc_by_pairs(scores, labels))
    assert m["metrics"]["accuracy"] == pytest.approx(5 / 6)

    doc = log.summary()
    json.dumps(doc, allow_nan=False)
    fb = doc["feedback"]
    assert (fb["joined"], fb["partial"], fb["duplicate"], fb["unknown"], fb["invalid"]) == (3, 1, 2, 1, 4)
    assert fb["conflicting_rows"] == 1
    assert doc["log"]["duplicate_records"] == 1


def test_capacity_and_ttl_evict_oldest_and_late_feedback_is_expired():
    clock = Clock()
    log = PredictionLog(capacity=10, ttl_secs=100, clock=clock)
    for i in range(5):
        log.record(f"r{i}", "m", "1", np.full(3, 0.5))  # 15 rows > 10: the oldest go
        clock.t += 1
    doc = log.summary()["log"]
    assert doc["rows"] <= 10 and doc["records"] == 3 and doc["evicted"]["capacity"] == 2
    assert log.feedback("r0", [1, 0, 1])["status"] == "expired"
    assert log.feedback("r4", [1, 0, 1])["status"] == "joined"
    clock.t += 101
    log.expire()
    doc = log.summary()["log"]
    assert doc["records"] == 0 and doc["rows"] == 0 and doc["evicted"]["ttl"] == 3
    assert log.feedback("r3", [1, 0, 1])["status"] == "expired"
    # labels already joined stay in the rolling metrics after their prediction is evicted
    assert log.metrics("m", "1")["rows"] == 3


def test_rolling_window_keeps_the_last_rows_and_the_time_window():
    clock = Clock()
    log = PredictionLog(capacity=10_000, ttl_secs=10_000, window_rows=5, tasks={"reg": "regression"}, clock=clock)
    for i in range(4):
        log.record(f"a{i}", "reg", "2", np.array([float(i), float(i)]))
        log.feedback(f"a{i}", [float(i), float(i) + 1])
    m = log.metrics("reg", "2")
    # last 5 labelled rows: (1,1)(1,2)(2,2)(2,3)(3,3)(3,4) -> last five are (1,2)(2,2)(2,3)(3,3)(3,4)
    assert m["rows"] == 5 and m["labelled_rows_total"] == 8
    assert m["metrics"]["mae"] == pytest.approx(3 / 5)
    assert m["metrics"]["rmse"] == pytest.approx(math.sqrt(3 / 5))
    # a batch larger than the window keeps its last rows
    log.record("big", "reg", "2", np.arange(12, dtype=float))
    log.feedback("big", np.arange(12, dtype=float) + 2)
    assert log.metrics("reg", "2")["metrics"]["bias"] == pytest.approx(-2.0)

    timed = PredictionLog(window_rows=100, window_secs=60, clock=clock)
    timed.record("old", "m", "1", [0.2, 0.9])
    clock.t += 120
    timed.record("new", "m", "1", [0.6, 0.4])
    timed.feedback("old", [0, 1])
    timed.feedback("new", [1, 1])
    m = timed.metrics("m", "1")
    assert m["rows"] == 2  # the rows served more than 60 s ago are outside the window
    assert m["task"] == "binary" and not m["task_declared"]  # inferred
    assert m["metrics"]["accuracy"] == pytest.approx(0.5)


def test_bounded_cardinality_and_families():
    clock = Clock()
    log = PredictionLog(max_versions=2, clock=clock)
    for v in ("1", "2", "3"):
        log.record(f"id{v}", "m", v, [0.9, 0.1])
        log.feedback(f"id{v}", [1, 0])
    doc = log.summary()
    assert [m["version"] for m in doc["models"]] == ["2", "3"] and doc["log"]["dropped_versions"] == 1
    text = metrics.render(log.families())
    assert 'parity_model_performance{model="m",version="3",metric="roc_auc"} 1' in text
    assert 'parity_feedback_total{result="joined"} 3' in text
    assert "parity_prediction_log_rows 6" in text


def test_bad_predictions_are_not_recorded_and_never_raise():
    log = PredictionLog()
    assert not log.record("a", "m", "1", "not numbers")
    assert not log.record("b", "m", "1", np.zeros((2, 3)))
    assert not log.record("c", "m", "1", [])
    assert log.record("d", "m", "1", 0.4)  # a scalar is one row


# -- SLO math --------------------------------------------------------------------------------------


BOUNDS = (0.01, 0.05, 0.1, 0.5)


def test_histogram_quantile_matches_prometheus_interpolation():
    counts = [10, 30, 40, 20, 0]  # per bucket; last is +Inf
    # rank 50 of 100 falls in (0.05, 0.1]: 40 in the bucket, 10 of them needed -> 0.05 + 0.05 * 10/40
    assert histogram_quantile(0.5, BOUNDS, counts) == pytest.approx(0.0625)
    assert histogram_quantile(0.05, BOUNDS, counts) == pytest.approx(0.005)  # first bucket starts at 0
    assert histogram_quantile(0.99, BOUNDS, counts) == pytest.approx(0.1 + 0.4 * 19 / 20)
    assert histogram_quantile(0.99, BOUNDS, [0, 0, 0, 0, 5]) == 0.5  # the +Inf bucket: last bound
    assert histogram_quantile(0.5, BOUNDS, [0] * 5) is None


def test_count_le():
    counts = [10, 30, 40, 20, 7]
    assert count_le(0.05, BOUNDS, counts) == 40  # exact at a bound
    assert count_le(0.075, BOUNDS, counts) == pytest.approx(60)  # half of the (0.05, 0.1] bucket
    assert count_le(0.005, BOUNDS, counts) == pytest.approx(5)
    assert count_le(10.0, BOUNDS, counts) == 100  # +Inf observations are not known to be <= 10


def test_burn_rate_and_multiwindow_rules():
    assert burn_rate(1, 1000, 0.999) == pytest.approx(1.0)
    assert burn_rate(144, 10_000, 0.999) == pytest.approx(14.4)
    assert burn_rate(0, 0, 0.999) is None
    with pytest.raises(ValueError):
        burn_rate(1, 10, 1.0)
    rule = BurnWindow(3600, 300, 14.4)
    assert rule.name == "1h/5m"
    assert evaluate_burn({3600: 20.0, 300: 30.0}, [rule])[0]["firing"]
    assert not evaluate_burn({3600: 20.0, 300: 1.0}, [rule])[0]["firing"]  # already recovered
    assert not evaluate_burn({3600: 2.0, 300: 30.0}, [rule])[0]["firing"]  # a blip
    assert not evaluate_burn({3600: None, 300: 30.0}, [rule])[0]["firing"]


def _hist(durations):
    h = metrics.Histogram(BOUNDS)
    for d in durations:
        h.observe(d)
    return h


def test_slo_tracker_windows_burn_and_resets():
    clock = Clock(0.0)
    slo = SloTracker(
        objectives=[SloObjective("latency", "latency", 0.999, 0.05), SloObjective("availability", "errors", 0.999)],
        burn_windows=[BurnWindow(3600, 300, 14.4, "page")],
        resolution_secs=10,
        clock=clock,
    )
    state = {"total": 0, "errors": 0}
    h = metrics.Histogram(BOUNDS)

    def run(steps, errors_per_step, duration):
        for _ in range(steps):  # every 10 s: 100 requests
            clock.t += 10
            state["total"] += 100
            state["errors"] += errors_per_step
            for _ in range(100):
                h.observe(duration)
            slo.sample("m", "1", state["total"], state["errors"], BOUNDS, h.counts)

    slo.sample("m", "1", 0, 0, BOUNDS, h.counts)
    run(360, 0, 0.004)  # an hour of good traffic
    r = slo.evaluate("m", "1")
    avail = next(o for o in r["objectives"] if o["name"] == "availability")
    assert avail["burn_rate"]["1h"] == 0 and avail["firing"] == []
    w1h = next(w for w in r["windows"] if w["window"] == "1h")
    assert w1h["requests"] == 36000 and w1h["covered_secs"] == 3600

    run(30, 50, 0.3)  # then five minutes in which half of the requests fail and all are slow
    r = slo.evaluate("m", "1")
    avail = next(o for o in r["objectives"] if o["name"] == "availability")
    lat = next(o for o in r["objectives"] if o["name"] == "latency")
    assert avail["bad_ratio"]["5m"] == pytest.approx(0.5)
    assert avail["burn_rate"]["5m"] == pytest.approx(500.0)
    # the last hour: 1500 of its 36000 requests failed
    assert avail["bad_ratio"]["1h"] == pytest.approx(1500 / 36000)
    assert avail["burn_rate"]["1h"] == pytest.approx(1500 / 36000 / 0.001)
    assert avail["firing"] == ["page"]
    assert lat["bad_ratio"]["5m"] == pytest.approx(1.0)
    assert lat["bad_ratio"]["1h"] == pytest.approx(3000 / 36000)
    assert lat["firing"] == ["page"]
    w5m = next(w for w in r["windows"] if w["window"] == "5m")
    assert 0.1 < w5m["latency"]["0.99"] <= 0.5 and w5m["latency"]["0.5"] > 0.1

    run(30, 0, 0.004)  # recovered: the short window is clean, so nothing fires any more
    r = slo.evaluate("m", "1")
    assert all(o["firing"] == [] for o in r["objectives"])

    # a worker restart resets the counters: the increase is taken from zero, never negative
    clock.t += 10
    slo.sample("m", "1", 100, 0, BOUNDS, _hist([0.004] * 100).counts)
    r = slo.evaluate("m", "1")
    w5m = next(w for w in r["windows"] if w["window"] == "5m")
    assert w5m["requests"] >= 0 and w5m["errors"] >= 0
    text = metrics.render(slo.families())
    assert 'parity_slo_burn_rate{model="m",version="1",slo="availability",window="5m"}' in text
    assert 'parity_slo_alarm{model="m",version="1",slo="availability",severity="page"} 0' in text
    json.dumps(slo.report(), allow_nan=False)


def test_slo_tracker_bounds_its_samples_and_reads_server_families():
    clock = Clock(0.0)
    slo = SloTracker(resolution_secs=10, clock=clock)  # default windows: up to 3 days
    for i in range(3 * 8640 + 500):  # more than three days of 10-second samples
        clock.t += 10
        slo.sample("m", "1", i * 10, 0, BOUNDS, [i, 0, 0, 0, 0])
    series = slo._series[("m", "1")]
    assert sum(len(t.samples) for t in series.tiers) <= 2100
    r = slo.evaluate("m", "1")
    w3d = next(w for w in r["windows"] if w["window"] == "3d")
    assert w3d["covered_secs"] >= 3 * 86400

    fam_ok = metrics.Family("parity_request_success_total", "counter", "")
    fam_fail = metrics.Family("parity_request_failure_total", "counter", "")
    fam_dur = metrics.Family("parity_request_duration_seconds", "histogram", "")
    lab = (("model", "fraud"), ("version", "4"))
    fam_ok.add(lab, 90)
    fam_fail.add(lab + (("reason", "internal"),), 6)
    fam_fail.add(lab + (("reason", "bad_input"),), 4)  # a client's fault: not an SLO error
    fam_fail.add((("model", ""), ("version", ""), ("reason", "not_found")), 3)
    fam_dur.add(lab, _hist([0.004] * 100))
    t = SloTracker(clock=clock)
    t.sample_families([fam_ok, fam_fail, fam_dur])
    clock.t += 300
    fam_ok.add(lab, 180)
    fam_fail.add(lab + (("reason", "internal"),), 12)
    fam_dur.add(lab, _hist([0.004] * 200))
    t.sample_families([fam_ok, fam_fail, fam_dur])
    r = t.report()
    assert [(x["model"], x["version"]) for x in r] == [("fraud", "4")]
    w5m = next(w for w in r[0]["windows"] if w["window"] == "5m")
    assert (w5m["requests"], w5m["errors"]) == (96, 6)


def test_a_worker_hands_joined_rows_to_the_hub_and_unknown_ids_are_counted_once():
    """With --workers N: the worker that logged a request joins its labels but hands the rows
    to the hub's rolling window; a worker asked about an id it never saw does not count it (the
    asking worker counts the final answer)."""
    worker, hub = PredictionLog(), PredictionLog()
    worker.forward_joined = True
    worker.record("a", "m", "1", np.array([0.9, 0.2, 0.7]))
    out = worker.feedback("a", [1, 0, 1])
    assert out["status"] == "joined" and out["rows"] == 3
    joined = out.pop("_joined")
    assert joined == {"model": "m", "version": "1", "preds": [0.9, 0.2, 0.7], "labels": [1.0, 0.0, 1.0], "served": joined["served"]}
    assert worker.summary()["models"] == []  # nothing kept in the worker's windows
    hub.add_joined(**joined)
    (m,) = hub.summary()["models"]
    assert m["rows"] == 3 and m["labelled_rows_total"] == 3 and m["metrics"]["roc_auc"] == 1.0
    assert worker.feedback("a", [1, 0, 1])["status"] == "duplicate"  # the worker still knows what it joined
    assert hub.feedback("nope", [1], count_missing=False)["status"] == "unknown"
    assert hub.summary()["feedback"]["unknown"] == 0
    hub.count_missing("unknown")
    assert hub.summary()["feedback"]["unknown"] == 1
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        hub.add_joined("m", "1", [0.1, 0.2], [1.0], 0.0)
