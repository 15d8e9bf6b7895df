"""Alerts: the log line, the webhook notifier against a real local HTTP server, the rules file."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from parity.monitoring import metrics
from parity.monitoring.alerts import Alert, Alerter, WebhookNotifier, _retry_after, alerts_from_model, log_alert
from parity.monitoring.performance import PredictionLog, SloTracker

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "configs" / "alerts" / "parity.rules.yml"


class Receiver:
    """A real HTTP server on 127.0.0.1 whose answers follow a script: a list of (status,
    headers) consumed one per request, then 200 for ever.  Records every request."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.cond:
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body, "t": time.monotonic()})
                    status, headers = outer.script.pop(0) if outer.script else (200, {})
                    outer.cond.notify_all()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, n: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"only {len(self.requests)} of {n} requests arrived"
                self.cond.wait(left)
            return list(self.requests)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(script=()):
        r = Receiver(script)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def _alert(**kw) -> Alert:
    base = dict(name="DriftAlarm", severity="warning", model="fraud", version="3", feature="amount",
                summary="PSI 0.31 on amount", details={"psi": 0.31, "p_value": 1e-9}, started_at=1_700_000_000.0)  # fmt: skip
    base.update(kw)
    return Alert(**base)


def test_alert_log_line_is_one_json_object(caplog):
    a = _alert(details={"psi": float("nan"), "edges": (1, 2), "note": 'a "quoted"\nline'})
    with caplog.at_level(logging.INFO, logger="parity.alerts"):
        line = log_alert(a)
    assert "\n" not in line
    rec = [r for r in caplog.records if r.name == "parity.alerts"]
    assert len(rec) == 1 and rec[0].levelno == logging.WARNING and rec[0].getMessage() == line
    doc = json.loads(line)
    assert doc["event"] == "alert" and doc["name"] == "DriftAlarm" and doc["feature"] == "amount"
    assert doc["details"] == {"psi": None, "edges": [1, 2], "note": 'a "quoted"\nline'}
    assert doc["started_at"] == "2023-11-14T22:13:20.000Z" and doc["status"] == "firing"
    with pytest.raises(ValueError):
        Alert("X", "loud")


def test_webhook_retries_5xx_and_429_with_retry_after_then_delivers(receiver):
    # 503, 500, then 429 asking for 1 second, then 200
    r = receiver([(503, {}), (500, {}), (429, {"Retry-After": "1"})])
    n = WebhookNotifier(r.url, timeout=5, max_retries=5, backoff_base=0.01, backoff_max=0.05, jitter=0.5,
                        headers={"Authorization": "Bearer t0k"}, proxies={})  # fmt: skip
    try:
        assert n.notify(_alert())
        assert n.flush(30)
        reqs = r.wait_for(4)
        assert len(reqs) == 4
        bodies = [json.loads(q["body"]) for q in reqs]
        assert all(b == bodies[0] for b in bodies)  # the same payload every time
        body = bodies[0]
        assert body["source"] == "parity" and body["version"] == 1
        assert body["alert"]["name"] == "DriftAlarm" and body["alert"]["model"] == "fraud" and body["alert"]["version"] == "3"
        assert body["alert"]["details"] == {"psi": 0.31, "p_value": 1e-9}
        assert reqs[0]["headers"]["Content-Type"] == "application/json"
        assert reqs[0]["headers"]["Authorization"] == "Bearer t0k"
        assert reqs[0]["path"] == "/hook"
        s = n.stats()
        assert (s["sent"], s["failed"], s["retries"], s["dropped"]) == (1, 0, 3, 0)
        delays = list(n.delays)
        assert len(delays) == 3
        assert 0.005 <= delays[0] <= 0.015 and 0.01 <= delays[1] <= 0.03  # exponential with jitter
        assert delays[2] == 1.0  # Retry-After honoured
        assert reqs[3]["t"] - reqs[2]["t"] >= 0.9  # and actually waited
    finally:
        n.close()


def test_webhook_gives_up_after_max_retries_and_logs(receiver, caplog):
    r = receiver([(502, {})] * 10)
    n = WebhookNotifier(r.url, max_retries=2, backoff_base=0.001, backoff_max=0.002, jitter=0, proxies={})
    try:
        with caplog.at_level(logging.ERROR, logger="parity.alerts"):
            n.notify(_alert())
            assert n.flush(30)
        assert len(r.wait_for(3)) == 3  # the first try and two retries
        s = n.stats()
        assert (s["sent"], s["failed"], s["retries"]) == (0, 1, 2)
        failures = [json.loads(x.getMessage()) for x in caplog.records if "alert_delivery_failed" in x.getMessage()]
        assert failures and failures[0]["attempts"] == 3 and failures[0]["error"] == "HTTP 502"
    finally:
        n.close()


def test_webhook_does_not_retry_a_4xx_refusal(receiver):
    r = receiver([(400, {})])
    n = WebhookNotifier(r.url, max_retries=5, backoff_base=0.001, proxies={})
    try:
        n.notify(_alert())
        assert n.flush(30)
        assert len(r.wait_for(1)) == 1
        assert n.stats()["failed"] == 1 and n.stats()["retries"] == 0
    finally:
        n.close()


def test_webhook_connection_refused_is_retried_then_given_up():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    n = WebhookNotifier(f"http://127.0.0.1:{port}/x", timeout=2, max_retries=3, backoff_base=0.001, backoff_max=0.004, proxies={})
    try:
        n.notify(_alert())
        assert n.flush(30)
        st = n.stats()
        assert (st["failed"], st["retries"], st["sent"]) == (1, 3, 0)
        assert list(n.delays) == pytest.approx([0.001, 0.002, 0.004], rel=0.11)
    finally:
        n.close()


def test_dedup_within_cooldown_and_resolution_passes(receiver):
    r = receiver()
    clock = {"t": 1000.0}
    n = WebhookNotifier(r.url, cooldown_secs=300, proxies={}, clock=lambda: clock["t"])
    try:
        assert n.notify(_alert())
        assert not n.notify(_alert(summary="PSI 0.35"))  # same key within the cooldown
        assert n.notify(_alert(feature="hour"))  # another feature: another key
        assert n.notify(_alert(status="resolved"))  # a resolution is its own key
        clock["t"] += 301
        assert n.notify(_alert())  # the cooldown is over
        assert n.flush(30)
        reqs = r.wait_for(4)
        assert len(reqs) == 4
        assert n.stats()["deduplicated"] == 1 and n.stats()["sent"] == 4
    finally:
        n.close()


def test_full_queue_drops_the_oldest_without_blocking(receiver):
    r = receiver()
    gate = threading.Event()

    # hold the delivery thread on its first alert: the receiver does not answer until the gate opens
    slow = Receiver()
    handler = slow.server.RequestHandlerClass
    original = handler.do_POST

    def held(self):
        gate.wait(30)
        original(self)

    handler.do_POST = held
    n = WebhookNotifier([slow.url, r.url], queue_size=3, cooldown_secs=0, timeout=30, proxies={})
    try:
        n.notify(_alert(feature="f0"))
        # wait (bounded) until the thread has taken f0 off the queue
        deadline = time.monotonic() + 30
        while n.stats()["queued"] and time.monotonic() < deadline:
            time.sleep(0.01)
        for i in range(1, 7):  # six more while it is busy: the queue keeps the newest three
            assert n.notify(_alert(feature=f"f{i}"))
        assert n.stats()["dropped"] == 3 and n.stats()["queued"] == 3
        gate.set()
        assert n.flush(30)
        got = [json.loads(q["body"])["alert"]["feature"] for q in r.wait_for(4)]
        assert got == ["f0", "f4", "f5", "f6"]
        text = metrics.render(n.families())
        assert 'parity_alert_notifications_total{result="dropped"} 3' in text
    finally:
        gate.set()
        n.close()
        slow.close()


def test_alerter_logs_every_alarm_and_notifies(receiver, caplog):
    r = receiver()
    n = WebhookNotifier(r.url, cooldown_secs=600, proxies={})
    alerter = Alerter([n])
    try:
        with caplog.at_level(logging.INFO, logger="parity.alerts"):
            alerter.fire(_alert())
            alerter.fire(_alert())  # deduplicated for the webhook, but still logged
            alerter.fire(_alert(name="SloBurn", severity="page", feature=None))
        assert alerter.flush(30)
        assert len(r.wait_for(2)) == 2
        lines = [x for x in caplog.records if x.name == "parity.alerts" and x.getMessage().startswith("{")]
        assert len(lines) == 3
        assert lines[2].levelno == logging.ERROR
        text = metrics.render(alerter.families())
        assert 'parity_alerts_total{name="DriftAlarm",severity="warning"} 2' in text
        assert 'parity_alert_notifications_total{result="deduplicated"} 1' in text
    finally:
        alerter.close()


def test_retry_after_parsing():
    now = 1_700_000_000.0
    assert _retry_after("3", now) == 3.0
    assert _retry_after("-1", now) == 0.0
    when = datetime.fromtimestamp(now, UTC) + timedelta(seconds=30)
    assert _retry_after(format_datetime(when, usegmt=True), now) == pytest.approx(30.0)
    assert _retry_after("soon", now) is None and _retry_after(None, now) is None


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        WebhookNotifier("ftp://x")
    with pytest.raises(ValueError):
        WebhookNotifier("http://x", jitter=2)


# -- the Prometheus rules file ---------------------------------------------------------------------

# Families the server exports today (parity.serving.stats, router, core) ...
SERVER_METRICS = {
    "parity_request_success_total", "parity_request_failure_total", "parity_inference_count_total",
    "parity_execution_count_total", "parity_queue_duration_seconds", "parity_compute_duration_seconds",
    "parity_request_duration_seconds", "parity_batch_size", "parity_pending_requests", "parity_model_load_total",
    "parity_server_ready", "parity_feature_fetch_duration_seconds", "parity_feature_missing_rows_total",
    "parity_shadow_requests_total", "parity_route_traffic_share", "parity_canary_step_percent",
}  # fmt: skip
# ... and those the monitoring work adds (drift, the tap, the feature store's error counter).
MONITORING_METRICS = {
    "parity_drift_alarm",
    "parity_data_quality_rate",
    "parity_data_quality_flag",
    "parity_monitoring_errors_total",
    "parity_feature_store_errors_total",
}
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "irate", "by", "on", "and", "or", "unless", "without",
    "ignoring", "group_left", "group_right", "histogram_quantile", "absent", "bool", "offset", "clamp_min",
    "clamp_max", "topk", "bottomk", "delta", "deriv", "abs", "vector", "time", "le",
}  # fmt: skip


def _known_metrics() -> set[str]:
    names = set(SERVER_METRICS) | MONITORING_METRICS
    fams = PredictionLog().families() + SloTracker().families() + Alerter().families()
    n = WebhookNotifier("http://127.0.0.1:9/x", proxies={})
    fams += n.families()
    n.close()
    names |= {f.name for f in fams}
    out = set(names)
    for name in names:  # histogram series
        out |= {name + "_bucket", name + "_sum", name + "_count"}
    return out


def _check_promql(expr: str, known: set[str], recorded: set[str]) -> list[str]:
    errors = []
    stack = []
    pairs = {")": "(", "]": "[", "}": "{"}
    in_str = None
    for ch in expr:
        if in_str:
            if ch == in_str:
                in_str = None
            continue
        if ch in "\"'`":
            in_str = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in ")]}":
            if not stack or stack.pop() != pairs[ch]:
                errors.append(f"unbalanced {ch!r}")
    if stack or in_str:
        errors.append("unclosed bracket or string")
    body = re.sub(r'"[^"]*"', '""', expr)
    body = re.sub(r"\{[^}]*\}", "", body)  # label matchers
    body = re.sub(r"\[[^\]]*\]", "", body)  # ranges
    body = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", " ", body)
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", body):
        tok = m.group(0)
        if tok in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]?", tok):
            continue
        if tok.startswith("parity"):
            if tok not in known and tok not in recorded:
                errors.append(f"unknown metric {tok}")
        else:
            errors.append(f"unexpected identifier {tok}")
    if not re.search(r"parity[a-z_:]*", body):
        errors.append("no parity metric")
    return errors


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    s = re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower())
    return s.replace(" ", "-")


def test_rules_file_structure_and_expressions():
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"} and doc["groups"]
    known = _known_metrics()
    recorded = {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}
    slugs = {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", (ROOT / "docs" / "alerts.md").read_text(), re.MULTILINE)}
    names, group_names = set(), set()
    alert_count = 0
    for g in doc["groups"]:
        assert g["name"] not in group_names
        group_names.add(g["name"])
        assert set(g) <= {"name", "rules", "interval"} and g["rules"]
        for rule in g["rules"]:
            where = f"{g['name']}/{rule.get('alert') or rule.get('record')}"
            assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), where
            assert _check_promql(rule["expr"], known, recorded) == [], where
            if "record" in rule:
                assert set(rule) <= {"record", "expr", "labels"}, where
                assert re.fullmatch(r"parity:[a-z_]+:[a-z0-9_]+", rule["record"]), where
                continue
            alert_count += 1
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, where
            assert re.fullmatch(r"Parity[A-Za-z]+", rule["alert"]) and rule["alert"] not in names, where
            names.add(rule["alert"])
            assert re.fullmatch(r"\d+[smh]", rule["for"]), where
            assert rule["labels"]["severity"] in {"page", "critical", "warning", "ticket"}, where
            assert rule["labels"]["component"], where
            ann = rule["annotations"]
            assert ann["summary"] and ann["description"], where
            anchor = ann["runbook"].split("#", 1)[1]
            assert ann["runbook"].startswith("docs/alerts.md#"), where
            assert anchor in slugs, f"{where}: no section {anchor} in docs/alerts.md"
            assert rule["expr"].count("{{") == 0, where
    assert alert_count >= 15
    # the list: drift, data quality, performance, SLO burn, rejections, feature store, canary
    required = {"parity_drift_alarm", "parity_data_quality_flag", "parity_data_quality_rate", "parity_model_performance", "parity:slo_errors:ratio_rate1h",
                "parity:slo_latency:ratio_rate5m", 'reason="rejected"', "parity_feature_store_errors_total", "parity_canary_step_percent"}  # fmt: skip
    text = RULES.read_text()
    assert all(r in text for r in required)


def test_promql_checker_catches_mistakes():
    known = _known_metrics()
    assert _check_promql("sum by (model) (rate(parity_request_success_total[5m])", known, set())  # unbalanced
    assert _check_promql("parity_no_such_metric > 1", known, set())
    assert _check_promql("sum(rate(parity_request_success_total[5m])) > 1", known, set()) == []


# -- alarms from the monitoring document -----------------------------------------------------------


def test_alerts_from_model_entry():
    report = {
        "alarm": True,
        "features": {
            "amount": {
                "alarm": True,
                "statistics": {"psi": 0.31, "chi2_p": 1e-9},
                "quality": {"flags": ["out_of_range"], "out_of_range_rate": 0.2},
            },
            "hour": {"alarm": False, "statistics": {"psi": 0.01}},
            "country": {"alarm": True, "statistics": {"psi": 0.4}},
        },
        "outputs": [{"name": "score", "alarm": True, "statistics": {"psi": 0.25}}],
    }
    entry = {
        "model": "fraud",
        "version": "3",
        "windows": [
            {"kind": "time", "rows": 10},  # still open: no report
            {"kind": "count", "rows": 800, "start": 1.0, "end": 2.0, "report": report},
            {"kind": "count", "rows": 800, "report": {"features": {"old": {"alarm": True}}}},  # older: ignored
        ],
        "performance": {"task": "binary", "rows": 600, "metrics": {"roc_auc": 0.61, "accuracy": 0.95, "log_loss": 0.9}},
        "slo": {
            "objectives": [
                {
                    "name": "latency",
                    "objective": 0.99,
                    "firing": ["page"],
                    "rules": [{"window": "1h/5m", "firing": True}],
                    "burn_rate": {"1h": 20.0},
                },
                {"name": "availability", "objective": 0.999, "firing": []},
            ]
        },
    }
    alerts = alerts_from_model(entry, limits={"roc_auc": 0.7, "accuracy": 0.9, "log_loss": 0.5}, now=100.0)
    got = sorted((a.name, a.severity, a.feature) for a in alerts)
    assert got == sorted([
        ("DriftAlarm", "warning", "amount"), ("DriftAlarm", "warning", "country"), ("DriftAlarm", "warning", "score"),
        ("DataQuality", "warning", "amount"), ("WidespreadDrift", "critical", None),
        ("PerformanceDegraded", "critical", "roc_auc"), ("PerformanceDegraded", "critical", "log_loss"),
        ("SloBurn:latency", "page", None),
    ])  # fmt: skip
    drift = next(a for a in alerts if a.feature == "amount" and a.name == "DriftAlarm")
    assert drift.details["window"] == {"kind": "count", "rows": 800, "start": 1.0, "end": 2.0}
    assert "psi 0.31" in drift.summary and drift.started_at == 100.0
    for a in alerts:
        json.loads(log_alert(a))  # each one is a valid log line
    # too few labelled rows: no performance verdict; and a malformed entry gives no alarms
    entry["performance"]["rows"] = 20
    assert not [a for a in alerts_from_model(entry, limits={"roc_auc": 0.7}) if a.name == "PerformanceDegraded"]
    assert alerts_from_model({"model": "m", "windows": "x", "performance": 3, "slo": {"objectives": [None]}}) == []


def test_alerts_from_a_drift_window_report():
    col = {
        "part": "features", "name": "country", "kind": "categorical", "alarm": True,
        "statistics": {"psi": {"value": 0.3, "p_value": 0.001, "threshold": 0.04, "alarm": True}},
        "data_quality": {"missing_rate": {"current": 0.0, "flag": False}, "unseen": {"share": 0.3, "count": 300, "flag": True}},
    }  # fmt: skip
    entry = {
        "model": "m",
        "version": 2,
        "windows": [{"kind": "count", "rows": 1000, "report": {"drift": True, "columns": [col]}}],
    }
    alerts = alerts_from_model(entry)
    assert [(a.name, a.feature, a.version) for a in alerts] == [("DriftAlarm", "country", "2"), ("DataQuality", "country", "2")]
    assert "psi 0.3" in alerts[0].summary
    assert alerts[1].details["flags"] == ["unseen"] and alerts[1].details["rates"] == {"missing_rate": 0.0, "unseen": 0.3}
