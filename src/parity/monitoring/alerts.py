"""Alerts: one structured log line per alarm, and webhooks with retries, back-off and dedup.

    from parity.monitoring.alerts import Alert, Alerter, WebhookNotifier
    notifier = WebhookNotifier(["https://hooks.example/parity"], timeout=5, max_retries=5)
    alerter = Alerter([notifier])
    alerter.fire(Alert("DriftAlarm", "warning", "fraud", "3", feature="amount",
                       summary="PSI 0.31 on amount", details={"psi": 0.31}))
    ...
    alerter.close()          # at shutdown: stops the notifier's thread (bounded wait)

**The log line.**  ``Alerter.fire`` (or ``log_alert``) writes every alarm -- deduplicated or not --
as one JSON object on one line to the logger ``parity.alerts``: level WARNING for ``warning``,
ERROR for ``critical`` and ``page``, INFO otherwise.  The object is ``Alert.to_dict()`` with
``"event": "alert"`` in front.

**The webhook.**  ``WebhookNotifier.notify(alert)`` never blocks and never raises: it appends to a
bounded queue (``queue_size``) that a background thread drains.  When the queue is full the
*oldest* queued alert is dropped (counted in ``dropped``).  Each alert is POSTed, as JSON, to each
URL in turn::

    {"source": "parity", "version": 1, "alert": {Alert.to_dict()}}

with ``Content-Type: application/json`` and any ``headers`` given (an Authorization token, say).

- 2xx: delivered (``sent``).
- Connection errors, timeouts, 5xx and 429: retried up to ``max_retries`` times after a back-off
  of ``min(backoff_max, backoff_base * 2**attempt)``, with jitter (``jitter`` = 0.1 draws the
  delay from [0.9 d, 1.1 d]; 0 means none).  A ``Retry-After`` header (seconds or an HTTP date)
  on a 429 or 503 is honoured instead, capped by ``max_retry_after``.  After the last retry the
  delivery is given up (``failed``; logged on ``parity.alerts`` at ERROR).
- Other 4xx: the receiver refused the payload; retrying would not help: given up at once
  (``failed``).

**Dedup.**  An alert whose ``key`` (name, model, version, feature) was accepted by this notifier
less than ``cooldown_secs`` ago is not sent again (``deduplicated``); the log line is still
written.  ``resolved`` alerts (``Alert.status == "resolved"``) have their own key, so a
resolution is sent even within the cooldown of the firing alert.

Counters (``stats()``, and ``families()``: ``parity_alert_notifications_total{result}`` with
result sent, failed, dropped, deduplicated; ``parity_alert_notification_retries_total``;
``parity_alerts_total{name,severity}`` from the Alerter, names from the fixed set the server
emits).
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import random
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from parity.monitoring.metrics import Family

log = logging.getLogger("parity.alerts")

SEVERITIES = ("info", "warning", "ticket", "critical", "page")
_LEVELS = {
    "info": logging.INFO,
    "ticket": logging.WARNING,
    "warning": logging.WARNING,
    "critical": logging.ERROR,
    "page": logging.ERROR,
}
PAYLOAD_VERSION = 1


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _jsonable(v):
    """Details made strict-JSON safe: NaN/inf become null, numpy scalars plain numbers, other
    objects their str()."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_jsonable(x) for x in v]
    item = getattr(v, "item", None)  # numpy scalars
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError):
            pass
    tolist = getattr(v, "tolist", None)  # numpy arrays
    if callable(tolist):
        return _jsonable(tolist())
    return str(v)


@dataclass
class Alert:
    """One alarm.  ``name`` is the kind (DriftAlarm, DataQuality, PerformanceDegraded, SloBurn,
    ...); ``started_at`` is epoch seconds (default: now)."""

    name: str
    severity: str
    model: str = ""
    version: str = ""
    feature: str | None = None
    summary: str = ""
    details: dict = field(default_factory=dict)
    started_at: float | None = None
    status: str = "firing"  # or "resolved"

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")
        if self.status not in ("firing", "resolved"):
            raise ValueError(f"status must be 'firing' or 'resolved', not {self.status!r}")
        if self.started_at is None:
            self.started_at = time.time()
        self.version = str(self.version)

    @property
    def key(self) -> tuple:
        return (self.name, self.model, self.version, self.feature, self.status)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "status": self.status,
            "severity": self.severity,
            "model": self.model,
            "version": self.version,
            "feature": self.feature,
            "summary": self.summary,
            "details": _jsonable(self.details),
            "started_at": _iso(self.started_at),
            "started_at_unix": self.started_at,
        }


def log_alert(alert: Alert) -> str:
    """Write the alert's one-line JSON to the ``parity.alerts`` logger; returns the line."""
    line = json.dumps({"event": "alert", **alert.to_dict()}, allow_nan=False, separators=(",", ":"), sort_keys=False)
    log.log(_LEVELS.get(alert.severity, logging.WARNING), line)
    return line


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


class WebhookNotifier:
    """POSTs alerts to webhook URLs from a background thread (see the module docstring)."""

    def __init__(
        self,
        urls: str | Sequence[str],
        timeout: float = 5.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 60.0,
        jitter: float = 0.1,
        cooldown_secs: float = 300.0,
        queue_size: int = 1000,
        max_retry_after: float = 300.0,
        headers: Mapping[str, str] | None = None,
        proxies: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ):
        urls = [urls] if isinstance(urls, str) else list(urls)
        for u in urls:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"a webhook URL must be http:// or https://, not {u!r}")
        if max_retries < 0 or queue_size < 1 or timeout <= 0 or backoff_base < 0 or backoff_max < 0 or not 0 <= jitter <= 1:
            raise ValueError(
                "invalid webhook settings: max_retries >= 0, queue_size >= 1, timeout > 0, backoff >= 0, 0 <= jitter <= 1"
            )
        self.urls = urls
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.jitter = float(jitter)
        self.cooldown_secs = float(cooldown_secs)
        self.max_retry_after = float(max_retry_after)
        self.headers = {"Content-Type": "application/json", "User-Agent": "parity-alerts/1", **(headers or {})}
        self.clock = clock
        self.rng = rng or random.Random()
        # proxies=None: the environment's (http_proxy, no_proxy, ...); {} for none
        handlers = [] if proxies is None else [urllib.request.ProxyHandler(dict(proxies))]
        self._opener = urllib.request.build_opener(*handlers)
        self._queue: deque[Alert] = deque()
        self._queue_size = int(queue_size)
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._stop = threading.Event()  # interrupts back-off sleeps at close
        self._last_sent: dict[tuple, float] = {}
        self.counts = {"sent": 0, "failed": 0, "dropped": 0, "deduplicated": 0}
        self.retries = 0
        self.delays: deque[float] = deque(maxlen=100)  # the last back-off delays slept (seconds)
        self._thread = threading.Thread(target=self._run, name="parity-webhook", daemon=True)
        self._thread.start()

    # -- the caller's side: O(1), never blocks on the network ---------------------------------------

    def notify(self, alert: Alert) -> bool:
        """Queue `alert` for delivery; False when it was deduplicated or the notifier is closed."""
        now = self.clock()
        with self._cond:
            if self._closed:
                return False
            last = self._last_sent.get(alert.key)
            if last is not None and now - last < self.cooldown_secs:
                self.counts["deduplicated"] += 1
                return False
            self._last_sent[alert.key] = now
            if len(self._last_sent) > 10 * self._queue_size:  # forget keys whose cooldown is over
                self._last_sent = {k: t for k, t in self._last_sent.items() if now - t < self.cooldown_secs}
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.counts["dropped"] += 1
            self._queue.append(alert)
            self._cond.notify()
            return True

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait (at most `timeout` seconds) until every queued alert has been delivered or given
        up; True when the queue drained."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting alerts, give the queue up to `timeout` seconds to drain, then stop the
        thread (alerts still queued are dropped and counted)."""
        with self._cond:
            self._closed = True
        self.flush(timeout)
        self._stop.set()
        with self._cond:
            self.counts["dropped"] += len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout)

    def stats(self) -> dict:
        with self._cond:
            return {**self.counts, "retries": self.retries, "queued": len(self._queue)}

    def families(self) -> list[Family]:
        s = self.stats()
        n = Family(
            "parity_alert_notifications_total",
            "counter",
            "Webhook alert deliveries by result: sent, failed (gave up), dropped (queue full), deduplicated.",
        )
        for result in ("sent", "failed", "dropped", "deduplicated"):
            n.add((("result", result),), s[result])
        r = Family(
            "parity_alert_notification_retries_total",
            "counter",
            "Webhook delivery attempts retried after an error, a 5xx or a 429.",
        )
        r.add((), s["retries"])
        q = Family("parity_alert_queue_length", "gauge", "Alerts waiting for webhook delivery.")
        q.add((), s["queued"])
        return [n, r, q]

    # -- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set() and not self._queue:
                    return
                alert = self._queue.popleft()
                self._busy = True
            try:
                body = json.dumps(
                    {"source": "parity", "version": PAYLOAD_VERSION, "alert": alert.to_dict()}, allow_nan=False
                ).encode()
                for url in self.urls:
                    ok = self._deliver(url, body, alert)
                    with self._cond:
                        self.counts["sent" if ok else "failed"] += 1
            except Exception:  # never let the thread die
                log.exception("webhook delivery crashed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _backoff(self, attempt: int) -> float:
        d = min(self.backoff_max, self.backoff_base * (2**attempt))
        if self.jitter:
            d *= 1.0 + self.rng.uniform(-self.jitter, self.jitter)
        return max(0.0, d)

    def _deliver(self, url: str, body: bytes, alert: Alert) -> bool:
        attempt = 0
        while True:
            retry_after = None
            try:
                req = urllib.request.Request(url, data=body, headers=self.headers, method="POST")
                with self._opener.open(req, timeout=self.timeout) as resp:
                    resp.read()
                return True
            except urllib.error.HTTPError as e:
                code = e.code
                retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None, time.time())
                e.close()
                if not (code == 429 or code >= 500):
                    log.error(
                        json.dumps(
                            {
                                "event": "alert_delivery_failed",
                                "url": url,
                                "alert": alert.name,
                                "status": code,
                                "attempts": attempt + 1,
                                "retryable": False,
                            }
                        )
                    )
                    return False
                reason = f"HTTP {code}"
            except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as e:
                reason = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt >= self.max_retries or self._stop.is_set():
                log.error(
                    json.dumps(
                        {
                            "event": "alert_delivery_failed",
                            "url": url,
                            "alert": alert.name,
                            "error": reason,
                            "attempts": attempt + 1,
                            "retryable": True,
                        }
                    )
                )
                return False
            delay = min(retry_after, self.max_retry_after) if retry_after is not None else self._backoff(attempt)
            with self._cond:
                self.retries += 1
                self.delays.append(delay)
            attempt += 1
            if self._stop.wait(delay):
                log.error(
                    json.dumps(
                        {
                            "event": "alert_delivery_failed",
                            "url": url,
                            "alert": alert.name,
                            "error": "notifier closed",
                            "attempts": attempt,
                        }
                    )
                )
                return False


class Alerter:
    """Logs every alarm and hands it to the notifiers (webhooks)."""

    def __init__(self, notifiers: Iterable[WebhookNotifier] = ()):
        self.notifiers = list(notifiers)
        self._lock = threading.Lock()
        self.fired: dict[tuple[str, str], int] = {}

    def fire(self, alert: Alert) -> str:
        line = log_alert(alert)
        with self._lock:
            k = (alert.name, alert.severity)
            self.fired[k] = self.fired.get(k, 0) + 1
        for n in self.notifiers:
            n.notify(alert)
        return line

    def flush(self, timeout: float = 30.0) -> bool:
        return all(n.flush(timeout) for n in self.notifiers)

    def close(self, timeout: float = 5.0) -> None:
        for n in self.notifiers:
            n.close(timeout)

    def families(self) -> list[Family]:
        f = Family(
            "parity_alerts_total", "counter", "Alarms raised (each one a log line on parity.alerts), by name and severity."
        )
        with self._lock:
            for (name, sev), c in sorted(self.fired.items()):
                f.add((("name", name), ("severity", sev)), c)
        out = [f]
        for n in self.notifiers[:1]:
            out += n.families()
        for n in self.notifiers[1:]:
            from parity.monitoring.metrics import merge

            merge(out, n.families())
        return out


# -- alarms from the monitoring document ------------------------------------------------------------

HIGHER_IS_BETTER = frozenset({"roc_auc", "accuracy", "r2"})


def _window_meta(w: Mapping) -> dict:
    return {k: w.get(k) for k in ("kind", "rows", "start", "end") if k in w}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def alerts_from_model(
    entry: Mapping,
    limits: Mapping[str, float] | None = None,
    min_rows: int = 500,
    widespread: int = 3,
    now: float | None = None,
) -> list[Alert]:
    """The alarms of one model version's entry of the monitoring document (the shape in
    parity.monitoring.report).  For the most recent window that has a drift report:
    ``DriftAlarm`` (warning) per flagged feature or output, ``WidespreadDrift`` (critical) when
    `widespread` or more are flagged, ``DataQuality`` (warning) per column with quality flags.
    ``PerformanceDegraded`` (critical) per rolling metric beyond its limit in `limits` -- a floor
    for roc_auc, accuracy and r2, a ceiling for the others: ``{"roc_auc": 0.7, "rmse": 12.0}`` --
    once the window holds `min_rows` labelled rows.  ``SloBurn:<objective>`` (page, or ticket when
    only a ticket rule fires) per SLO objective that fires.  Pure: fire them with
    ``Alerter.fire``; the notifier's cooldown keeps a lasting condition from re-sending."""
    model, version = str(entry.get("model", "")), str(entry.get("version", ""))
    t = time.time() if now is None else now
    out: list[Alert] = []
    windows = entry.get("windows") if isinstance(entry.get("windows"), list) else []
    latest = next((w for w in windows if isinstance(w, Mapping) and isinstance(w.get("report"), Mapping)), None)
    if latest is not None:
        from parity.monitoring.report import column_alarm, column_quality, column_statistics, report_columns

        flagged = []
        for part, cols in report_columns(latest["report"]).items():
            for name, col in cols:
                what = f"{model} v{version}: {part[:-1]} {name}"
                if column_alarm(col) is True:
                    flagged.append(name)
                    stats = column_statistics(col)
                    shown = ", ".join(f"{k} {s['value']:.3g}" for k, s in stats.items() if _is_number(s["value"]))
                    out.append(
                        Alert(
                            "DriftAlarm", "warning", model, version, feature=name,
                            summary=f"{what} drifted ({shown})" if shown else f"{what} drifted",
                            details={"part": part, "statistics": stats, "window": _window_meta(latest)},
                            started_at=t,
                        )
                    )  # fmt: skip
                flags, rates = column_quality(col)
                if flags:
                    out.append(
                        Alert(
                            "DataQuality", "warning", model, version, feature=name,
                            summary=f"{what}: {', '.join(flags)}",
                            details={"part": part, "flags": flags, "rates": rates, "window": _window_meta(latest)},
                            started_at=t,
                        )
                    )  # fmt: skip
        if len(flagged) >= widespread:
            out.append(
                Alert(
                    "WidespreadDrift", "critical", model, version,
                    summary=f"{model} v{version}: {len(flagged)} columns drift at once",
                    details={"columns": flagged, "window": _window_meta(latest)},
                    started_at=t,
                )
            )  # fmt: skip
    perf = entry.get("performance") if isinstance(entry.get("performance"), Mapping) else {}
    rows = perf.get("rows")
    metrics = perf.get("metrics") if isinstance(perf.get("metrics"), Mapping) else {}
    if limits and _is_number(rows) and rows >= min_rows:
        for metric, limit in limits.items():
            v = metrics.get(metric)
            if not _is_number(v):
                continue
            floor = metric in HIGHER_IS_BETTER
            if (v < limit) if floor else (v > limit):
                out.append(
                    Alert(
                        "PerformanceDegraded", "critical", model, version, feature=metric,
                        summary=f"{model} v{version}: {metric} {v:.4g} {'below' if floor else 'above'} {limit:g} over {rows} labelled rows",
                        details={"metric": metric, "value": v, "limit": limit, "rows": rows, "task": perf.get("task")},
                        started_at=t,
                    )
                )  # fmt: skip
    slo = entry.get("slo") if isinstance(entry.get("slo"), Mapping) else {}
    objectives = slo.get("objectives") if isinstance(slo.get("objectives"), list) else []
    for o in objectives:
        if not isinstance(o, Mapping) or not isinstance(o.get("firing"), list) or not o["firing"]:
            continue
        rules = [r for r in o.get("rules") or [] if isinstance(r, Mapping) and r.get("firing")]
        out.append(
            Alert(
                f"SloBurn:{o.get('name')}", "page" if "page" in o["firing"] else "ticket", model, version,
                summary=f"{model} v{version}: the {o.get('name')} SLO ({o.get('objective')}) burns its error budget too fast",
                details={"objective": o.get("objective"), "threshold_secs": o.get("threshold_secs"),
                         "burn_rate": o.get("burn_rate"), "bad_ratio": o.get("bad_ratio"), "rules": rules},
                started_at=t,
            )
        )  # fmt: skip
    return out


__all__ = [
    "HIGHER_IS_BETTER",
    "PAYLOAD_VERSION",
    "SEVERITIES",
    "Alert",
    "Alerter",
    "WebhookNotifier",
    "alerts_from_model",
    "log_alert",
]
