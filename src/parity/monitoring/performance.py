"""Performance monitoring: predictions joined with late ground truth, rolling metrics, and SLOs.

Three pieces, each usable on its own; the server owns one of each.

**PredictionLog** -- what the server predicted, kept until the labels come::

    log = PredictionLog(capacity=200_000, ttl_secs=7 * 86400, tasks={"fraud": "binary"})
    log.record(request_id, "fraud", "3", scores)            # after answering; scores: [rows] floats
    ...hours later...
    log.feedback(request_id, [0, 1, 0])                      # -> {"status": "joined", "rows": 3, ...}
    log.summary()                                           # JSON: rolling metrics per model version
    log.families()                                          # Prometheus families

- ``capacity`` bounds the number of *prediction rows* held (not requests); ``ttl_secs`` bounds
  their age.  When either is exceeded the oldest records are evicted (``record`` is amortized
  O(1): an ordered dict keyed by request id, evicted from the front).  A batch's predictions are
  kept as one numpy array: no per-row Python on the request path.
- ``predictions`` is one scalar per row: a 1-D array, ``[rows, 1]``, or ``[rows, 2]`` (two-class
  probabilities: column 1, the positive class, is kept).  For a ``binary`` task the scalar is the
  probability (or score) of the positive class; for ``regression`` it is the predicted value.
- A request id is recorded once: recording an id that is still held is refused (counted as
  ``duplicate_records``) -- ids are the join key, so they must be unique.
- ``feedback(request_id, labels, rows=None)`` joins labels with the logged predictions.  ``labels``
  covers every row of the request (``rows=None``) or the rows listed in ``rows`` (indices).  The
  result's ``status`` is one of

  ``joined``     every given label was new and was joined;
  ``partial``    some rows were new (joined), the others already had a label (left as they were);
  ``duplicate``  every row already had a label: nothing changed (resending is harmless);
  ``unknown``    the id was never recorded here (or so long ago that even its eviction is forgotten);
  ``expired``    the id was recorded but evicted (capacity or TTL) before its labels arrived;
  ``invalid``    wrong number of labels, a row index out of range, or a label that the task cannot
                 take (binary labels are 0/1 or booleans; regression labels finite numbers).

  **Duplicates are refused, never replaced**: the first label of a (request id, row) wins, so a
  retried feedback call can never count a row twice, and a later conflicting label is reported
  (``conflicts`` counts rows whose second label differed from the first) rather than silently
  rewriting history.  Every outcome is counted (``feedback_counts``, ``parity_feedback_total``).
- Joined rows go into a rolling window per (model, version): the last ``window_rows`` labelled
  rows, optionally restricted to rows *served* within the last ``window_secs`` (the time window is
  on the prediction's timestamp, so it measures how the model did on the traffic of that period).

**Rolling metrics** (``binary_metrics``, ``regression_metrics``: pure functions):

- binary: ``roc_auc`` (Mann-Whitney U with average ranks: exact with ties; null unless both
  classes are present), ``accuracy`` at the task's threshold (default 0.5: ``score >= threshold``
  predicts 1), ``log_loss`` (scores clipped to [1e-15, 1 - 1e-15]; meaningful when scores are
  probabilities), ``brier``, ``positive_rate`` (labels) and ``mean_score``.
- regression: ``rmse``, ``mae``, ``bias`` (mean of prediction - label), ``r2`` (null when the
  labels are constant).

A model's task is declared (``tasks={"fraud": "binary"}`` or ``declare(model, task,
threshold=...)``); undeclared, it is inferred from the window: ``binary`` when every label is 0 or 1
and every prediction lies in [0, 1], else ``regression``.

**SLOs** (``SloTracker``; the math in pure functions ``histogram_quantile``, ``count_le``,
``burn_rate``, ``evaluate_burn``): the server samples its cumulative counters (requests, errors,
the request-duration histogram) every few seconds; the tracker keeps the samples that the longest
window needs (at most one per ``resolution_secs``) and computes, per window, the increase of each
counter, the bad-event ratio, the latency quantile and the burn rate::

    burn rate = (bad events / all events over the window) / (1 - objective)

A burn rate of 1 spends the error budget exactly over the SLO period; the multi-window rule of
the SRE workbook alerts when both a long and a short window burn faster than a factor
(``DEFAULT_BURN_WINDOWS``: 1h and 5m above 14.4 pages, 6h and 30m above 6 pages, 3d and 6h above 1
opens a ticket).  A latency SLO ``objective`` of 0.99 with ``threshold_secs`` 0.05 means "99% of
requests answered within 50 ms" (p99 <= 50 ms); its bad events are the requests slower than the
threshold, read from the histogram (interpolated linearly inside the bucket that holds the
threshold, as ``histogram_quantile`` does; exact when the threshold is a bucket bound).  An
error-rate SLO's bad events are the failed requests (by default the reasons that are the server's
fault: ``internal``, ``timeout``, ``rejected``).  Counter resets (a restarted worker) are handled
as Prometheus' ``increase`` does.

Prometheus families (labels bounded: model and version of served versions, at most
``max_versions`` tracked; metric, slo, window and result from fixed lists):

- ``parity_model_performance{model,version,metric}`` gauge -- the rolling metrics
- ``parity_model_performance_rows{model,version}`` gauge -- labelled rows in the window
- ``parity_feedback_total{result}`` counter -- feedback calls by status
- ``parity_feedback_rows_total{model,version}`` counter -- rows joined
- ``parity_prediction_log_rows`` gauge, ``parity_prediction_log_evicted_total{reason}`` counter
- ``parity_slo_burn_rate{model,version,slo,window}`` gauge
- ``parity_slo_bad_ratio{model,version,slo,window}`` gauge
- ``parity_slo_latency_seconds{model,version,quantile,window}`` gauge
- ``parity_slo_alarm{model,version,slo,severity}`` gauge (1 while a burn rule fires)
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from parity.monitoring.metrics import Family

TASKS = ("binary", "regression")
FEEDBACK_RESULTS = ("joined", "partial", "duplicate", "unknown", "expired", "invalid")
BINARY_METRICS = ("roc_auc", "accuracy", "log_loss", "brier", "positive_rate", "mean_score")
REGRESSION_METRICS = ("rmse", "mae", "bias", "r2")
_EPS = 1e-15


# ------------------------------------------------------------------------------------------------
# metrics (pure functions)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC by the Mann-Whitney U statistic with average ranks, so ties count one half (exact,
    equal to the area under the ROC curve with ties drawn as diagonal segments).  None when one
    class is absent."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # average rank (1-based) of each run of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(s)]))
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks_sorted = np.repeat(avg, ends - starts)
    ranks = np.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """Rolling metrics of a binary classifier (see the module docstring); {} for no rows."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if len(s) == 0:
        return {}
    p = np.clip(s, _EPS, 1.0 - _EPS)
    return {
        "roc_auc": roc_auc(s, y),
        "accuracy": float(np.mean((s >= threshold) == (y >= 0.5))),
        "log_loss": float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p))),
        "brier": float(np.mean((s - y) ** 2)),
        "positive_rate": float(y.mean()),
        "mean_score": float(s.mean()),
    }


def regression_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict:
    """RMSE, MAE, bias (mean prediction - label) and R^2; {} for no rows."""
    p = np.asarray(predictions, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if len(p) == 0:
        return {}
    err = p - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "bias": float(err.mean()),
        "r2": (1.0 - float(np.sum(err**2)) / ss_tot) if ss_tot > 0 else None,
    }


def infer_task(predictions: np.ndarray, labels: np.ndarray) -> str:
    """binary when every label is 0/1 and every prediction is in [0, 1]; else regression."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64)
    if len(y) and np.all((y == 0) | (y == 1)) and np.all((p >= 0) & (p <= 1)):
        return "binary"
    return "regression"


# ------------------------------------------------------------------------------------------------
# the prediction log


class _Record:
    __slots__ = ("labelled", "labels", "model", "preds", "ts", "version")

    def __init__(self, model: str, version: str, ts: float, preds: np.ndarray):
        self.model, self.version, self.ts, self.preds = model, version, ts, preds
        self.labels: np.ndarray | None = None  # float64 [rows], allocated on the first feedback
        self.labelled: np.ndarray | None = None  # bool [rows]


class RollingWindow:
    """The last `max_rows` labelled rows of one model version (ring buffers), with the time each
    row was served."""

    def __init__(self, max_rows: int):
        self.max_rows = max_rows
        self.preds = np.zeros(max_rows, dtype=np.float64)
        self.labels = np.zeros(max_rows, dtype=np.float64)
        self.served = np.zeros(max_rows, dtype=np.float64)
        self.pos = 0  # next write slot
        self.size = 0
        self.total = 0  # rows ever added

    def add(self, preds: np.ndarray, labels: np.ndarray, served: float) -> None:
        n = len(preds)
        if n == 0:
            return
        self.total += n
        if n >= self.max_rows:
            preds, labels, n = preds[-self.max_rows :], labels[-self.max_rows :], self.max_rows
        first = min(n, self.max_rows - self.pos)
        sl = slice(self.pos, self.pos + first)
        self.preds[sl], self.labels[sl], self.served[sl] = preds[:first], labels[:first], served
        rest = n - first
        if rest:
            self.preds[:rest], self.labels[:rest], self.served[:rest] = preds[first:], labels[first:], served
        self.pos = (self.pos + n) % self.max_rows
        self.size = min(self.max_rows, self.size + n)

    def view(self, since: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, labels) in the window, oldest first (order does not matter to the metrics)."""
        if self.size < self.max_rows:
            p, y, t = self.preds[: self.size], self.labels[: self.size], self.served[: self.size]
        else:
            p, y, t = self.preds, self.labels, self.served
        if since is not None:
            keep = t >= since
            return p[keep], y[keep]
        return p.copy(), y.copy()


@dataclass
class _Task:
    task: str
    threshold: float = 0.5


class PredictionLog:
    """Predictions the server served, joined with late labels; rolling metrics per model version.
    Thread-safe (one lock; every operation is short)."""

    def __init__(
        self,
        capacity: int = 200_000,
        ttl_secs: float = 7 * 86400.0,
        window_rows: int = 10_000,
        window_secs: float | None = None,
        tasks: Mapping[str, str | tuple[str, float]] | None = None,
        max_versions: int = 64,
        remember_evicted: int | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if capacity < 1 or window_rows < 1 or max_versions < 1:
            raise ValueError("capacity, window_rows and max_versions must be positive")
        if ttl_secs <= 0:
            raise ValueError("ttl_secs must be positive")
        self.capacity = int(capacity)
        self.ttl_secs = float(ttl_secs)
        self.window_rows = int(window_rows)
        self.window_secs = window_secs
        self.max_versions = int(max_versions)
        self.clock = clock
        self._lock = threading.Lock()
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._rows = 0
        # ids evicted before their labels came, so late feedback is told "expired", not "unknown"
        self._evicted: OrderedDict[str, None] = OrderedDict()
        self._remember = int(remember_evicted if remember_evicted is not None else min(capacity, 1_000_000))
        self._tasks: dict[str, _Task] = {}
        for model, spec in (tasks or {}).items():
            if isinstance(spec, str):
                self.declare(model, spec)
            else:
                self.declare(model, spec[0], spec[1])
        self._windows: OrderedDict[tuple[str, str], RollingWindow] = OrderedDict()
        self._joined_rows: dict[tuple[str, str], int] = {}
        self.feedback_counts = dict.fromkeys(FEEDBACK_RESULTS, 0)
        self.conflicts = 0
        self.duplicate_records = 0
        self.evicted = {"capacity": 0, "ttl": 0}
        self.dropped_versions = 0
        # With --workers N, a worker other than the monitoring hub hands the rows it joins to the
        # hub (parity.serving.workers), which keeps the rolling windows: feedback() then returns
        # them under "_joined" instead of adding them here.
        self.forward_joined = False

    # -- configuration ----------------------------------------------------------------------------

    def declare(self, model: str, task: str, threshold: float = 0.5) -> None:
        """Declare a model's task ("binary" or "regression") and a binary model's threshold."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {task!r}")
        if not (0.0 <= float(threshold) <= 1.0) and task == "binary":
            raise ValueError(f"threshold must be in [0, 1], not {threshold!r}")
        self._tasks[model] = _Task(task, float(threshold))

    # -- the request path -------------------------------------------------------------------------

    def record(self, request_id: str, model: str, version: str, predictions, timestamp: float | None = None) -> bool:
        """Log one answered request's predictions (one scalar per row).  False (and counted) when
        the id is already held or the predictions cannot be read; never raises on bad data."""
        try:
            p = np.asarray(predictions, dtype=np.float64)
        except (TypeError, ValueError):
            return False
        if p.ndim == 2 and p.shape[1] == 2:
            p = p[:, 1]
        elif p.ndim == 2 and p.shape[1] == 1 or p.ndim == 0:
            p = p.reshape(-1)
        if p.ndim != 1 or len(p) == 0:
            return False
        ts = self.clock() if timestamp is None else float(timestamp)
        version = str(version)
        with self._lock:
            if request_id in self._records:
                self.duplicate_records += 1
                return False
            self._records[request_id] = _Record(model, version, ts, p)
            self._rows += len(p)
            self._evict(ts)
        return True

    def _evict(self, now: float) -> None:
        horizon = now - self.ttl_secs
        records = self._records
        while records:
            rid, rec = next(iter(records.items()))
            if self._rows > self.capacity:
                reason = "capacity"
            elif rec.ts < horizon:
                reason = "ttl"
            else:
                break
            records.popitem(last=False)
            self._rows -= len(rec.preds)
            self.evicted[reason] += 1
            self._evicted[rid] = None
            if len(self._evicted) > self._remember:
                self._evicted.popitem(last=False)

    def expire(self, now: float | None = None) -> None:
        """Evict records older than the TTL (``record`` does it too; call this when idle)."""
        with self._lock:
            self._evict(self.clock() if now is None else now)

    # -- feedback ---------------------------------------------------------------------------------

    def feedback(self, request_id: str, labels, rows: Sequence[int] | None = None, count_missing: bool = True) -> dict:
        """Join ground-truth labels with a logged request (see the module docstring).  Returns
        {"request_id", "status", "rows": rows joined, "duplicates", "conflicts", "message"?,
        "model"?, "version"?}.  `count_missing=False`: an unknown or expired id is not counted
        here (another worker may hold it; the asking worker counts the final answer)."""
        out: dict = {"request_id": request_id, "status": "invalid", "rows": 0, "duplicates": 0, "conflicts": 0}
        try:
            y = np.asarray(labels, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return self._count(out, "labels must be numbers (or booleans)")
        with self._lock:
            self._evict(self.clock())
            rec = self._records.get(request_id)
            if rec is None:
                out["status"] = "expired" if request_id in self._evicted else "unknown"
                if count_missing:
                    self.feedback_counts[out["status"]] += 1
                return out
            out["model"], out["version"] = rec.model, rec.version
            n = len(rec.preds)
            if rows is None:
                idx = np.arange(n)
            else:
                try:
                    idx = np.asarray(rows, dtype=np.int64).reshape(-1)
                except (TypeError, ValueError):
                    return self._count(out, "rows must be integer indices")
                if len(idx) and (idx.min() < 0 or idx.max() >= n):
                    return self._count(out, f"row indices must be in [0, {n})")
                if len(np.unique(idx)) != len(idx):
                    return self._count(out, "row indices must be distinct")
            if len(y) != len(idx):
                return self._count(out, f"expected {len(idx)} labels, got {len(y)}")
            if not np.all(np.isfinite(y)):
                return self._count(out, "labels must be finite")
            spec = self._tasks.get(rec.model)
            if spec is not None and spec.task == "binary" and not np.all((y == 0) | (y == 1)):
                return self._count(out, "binary labels are 0 or 1")
            if rec.labelled is None:
                rec.labelled = np.zeros(n, dtype=bool)
                rec.labels = np.zeros(n, dtype=np.float64)
            already = rec.labelled[idx]
            dup = int(already.sum())
            if dup:
                out["duplicates"] = dup
                out["conflicts"] = int(np.sum(rec.labels[idx[already]] != y[already]))
                self.conflicts += out["conflicts"]
            new = ~already
            new_idx, new_y = idx[new], y[new]
            if len(new_idx):
                rec.labelled[new_idx] = True
                rec.labels[new_idx] = new_y
                if self.forward_joined:
                    out["_joined"] = {"model": rec.model, "version": rec.version, "preds": rec.preds[new_idx].tolist(),
                                      "labels": new_y.tolist(), "served": rec.ts}  # fmt: skip
                else:
                    self._add_joined((rec.model, rec.version), rec.preds[new_idx], new_y, rec.ts)
            out["rows"] = len(new_idx)
            out["status"] = "joined" if not dup else ("partial" if len(new_idx) else "duplicate")
            self.feedback_counts[out["status"]] += 1
            return out

    def _add_joined(self, key: tuple[str, str], preds: np.ndarray, labels: np.ndarray, served: float) -> None:
        self._window(key).add(preds, labels, served)
        self._joined_rows[key] = self._joined_rows.get(key, 0) + len(preds)

    def add_joined(self, model: str, version: str, preds, labels, served: float) -> None:
        """Rows another worker joined (this is the monitoring hub): into the rolling window."""
        p, y = np.asarray(preds, dtype=np.float64).reshape(-1), np.asarray(labels, dtype=np.float64).reshape(-1)
        if len(p) != len(y):
            raise ValueError(f"{len(p)} predictions for {len(y)} labels")
        with self._lock:
            self._add_joined((model, str(version)), p, y, float(served))

    def count_missing(self, status: str) -> None:
        """Count a feedback call that no worker could join ("unknown" or "expired")."""
        with self._lock:
            self.feedback_counts[status] += 1

    def _count(self, out: dict, message: str) -> dict:
        out["message"] = message
        self.feedback_counts["invalid"] += 1
        return out

    def _window(self, key: tuple[str, str]) -> RollingWindow:
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = RollingWindow(self.window_rows)
            while len(self._windows) > self.max_versions:  # bounded cardinality: forget the stalest
                old, _ = self._windows.popitem(last=False)
                self._joined_rows.pop(old, None)
                self.dropped_versions += 1
        else:
            self._windows.move_to_end(key)
        return w

    # -- reporting --------------------------------------------------------------------------------

    def metrics(self, model: str, version: str, now: float | None = None) -> dict:
        """The rolling summary of one model version (the JSON described in docs/performance.md)."""
        with self._lock:
            return self._summary((model, str(version)), self.clock() if now is None else now)

    def _summary(self, key: tuple[str, str], now: float) -> dict:
        model, version = key
        w = self._windows.get(key)
        since = None if self.window_secs is None else now - self.window_secs
        p, y = w.view(since) if w is not None else (np.zeros(0), np.zeros(0))
        spec = self._tasks.get(model)
        task = spec.task if spec else (infer_task(p, y) if len(y) else None)
        threshold = spec.threshold if spec else 0.5
        if task == "binary":
            values = binary_metrics(p, y, threshold)
        elif task == "regression":
            values = regression_metrics(p, y)
        else:
            values = {}
        return {
            "model": model,
            "version": version,
            "task": task,
            "task_declared": spec is not None,
            "threshold": threshold if task == "binary" else None,
            "window": {"max_rows": self.window_rows, "secs": self.window_secs},
            "rows": len(y),
            "labelled_rows_total": self._joined_rows.get(key, 0),
            "metrics": values,
        }

    def summary(self, now: float | None = None) -> dict:
        """{"models": [per model version summary, ...], "feedback": {...}, "log": {...}}."""
        with self._lock:
            t = self.clock() if now is None else now
            models = [self._summary(k, t) for k in sorted(self._windows)]
            return {
                "models": models,
                "feedback": {**self.feedback_counts, "conflicting_rows": self.conflicts},
                "log": {
                    "records": len(self._records),
                    "rows": self._rows,
                    "capacity_rows": self.capacity,
                    "ttl_secs": self.ttl_secs,
                    "evicted": dict(self.evicted),
                    "duplicate_records": self.duplicate_records,
                    "dropped_versions": self.dropped_versions,
                },
            }

    def families(self, now: float | None = None) -> list[Family]:
        doc = self.summary(now)
        perf = Family(
            "parity_model_performance", "gauge", "Rolling model performance over the labelled rows in the window, by metric."
        )
        rows = Family("parity_model_performance_rows", "gauge", "Labelled rows in the rolling performance window.")
        joined = Family("parity_feedback_rows_total", "counter", "Labelled rows joined with logged predictions.")
        fb = Family(
            "parity_feedback_total", "counter", "Feedback calls by result: joined, partial, duplicate, unknown, expired, invalid."
        )
        log_rows = Family("parity_prediction_log_rows", "gauge", "Prediction rows held for joining with labels.")
        evicted = Family("parity_prediction_log_evicted_total", "counter", "Logged requests evicted, by reason (capacity, ttl).")
        for m in doc["models"]:
            lab = (("model", m["model"]), ("version", m["version"]))
            rows.add(lab, m["rows"])
            joined.add(lab, m["labelled_rows_total"])
            for name, v in m["metrics"].items():
                if v is not None and math.isfinite(v):
                    perf.add(lab + (("metric", name),), v)
        for result in FEEDBACK_RESULTS:
            fb.add((("result", result),), doc["feedback"][result])
        log_rows.add((), doc["log"]["rows"])
        for reason, n in doc["log"]["evicted"].items():
            evicted.add((("reason", reason),), n)
        return [perf, rows, joined, fb, log_rows, evicted]


# ------------------------------------------------------------------------------------------------
# SLO math (pure functions over cumulative counters)


def count_le(threshold: float, bounds: Sequence[float], counts: Sequence[float]) -> float:
    """How many observations were <= `threshold`, from a histogram's per-bucket (NOT cumulative)
    `counts` (``len(bounds) + 1`` entries, the last one +Inf).  Exact at a bucket bound; inside a
    bucket, linear interpolation (the first bucket's lower edge is 0, as in histogram_quantile)."""
    total = 0.0
    lower = 0.0
    for i, b in enumerate(bounds):
        c = counts[i]
        if threshold >= b:
            total += c
            lower = b
            continue
        if threshold > lower and b > lower:
            total += c * (threshold - lower) / (b - lower)
        return total
    return total  # above the last finite bound: the +Inf bucket's observations are not counted


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """Prometheus' histogram_quantile over per-bucket counts: linear interpolation inside the
    bucket holding rank q * total; the first bucket starts at 0; a rank in the +Inf bucket gives
    the last finite bound.  None for no observations."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], not {q}")
    total = float(sum(counts))
    if total <= 0:
        return None
    rank = q * total
    cum = 0.0
    lower = 0.0
    for i, b in enumerate(bounds):
        c = counts[i]
        if c > 0 and cum + c >= rank:
            return float(lower + (b - lower) * (rank - cum) / c)
        cum += c
        lower = b
    return float(bounds[-1]) if bounds else None


def burn_rate(bad: float, total: float, objective: float) -> float | None:
    """(bad / total) / (1 - objective): 1.0 spends the error budget exactly over the SLO period.
    None when there were no events."""
    if not 0.0 < objective < 1.0:
        raise ValueError(f"objective must be in (0, 1), not {objective}")
    if total <= 0:
        return None
    return (bad / total) / (1.0 - objective)


@dataclass(frozen=True)
class BurnWindow:
    """A multi-window burn-rate rule: fires when both windows burn faster than `factor`."""

    long_secs: float
    short_secs: float
    factor: float
    severity: str = "page"

    @property
    def name(self) -> str:
        return f"{_dur(self.long_secs)}/{_dur(self.short_secs)}"


def _dur(secs: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n and secs % n == 0:
            return f"{int(secs // n)}{unit}"
    return f"{secs:g}s"


# The SRE workbook's table for a 30-day SLO: 2% of the budget in 1h, 5% in 6h (pages), 10% in 3d (ticket).
DEFAULT_BURN_WINDOWS = (
    BurnWindow(3600, 300, 14.4, "page"),
    BurnWindow(6 * 3600, 1800, 6.0, "page"),
    BurnWindow(3 * 86400, 6 * 3600, 1.0, "ticket"),
)


def evaluate_burn(burn: Mapping[float, float | None], windows: Iterable[BurnWindow]) -> list[dict]:
    """Given burn rates by window length (seconds -> rate or None), the rules' outcomes:
    [{"window": "1h/5m", "long": r, "short": r, "factor": f, "severity": s, "firing": bool}]."""
    out = []
    for w in windows:
        lo, sh = burn.get(w.long_secs), burn.get(w.short_secs)
        firing = lo is not None and sh is not None and lo > w.factor and sh > w.factor
        out.append(
            {"window": w.name, "long": lo, "short": sh, "factor": w.factor, "severity": w.severity, "firing": bool(firing)}
        )
    return out


@dataclass(frozen=True)
class SloObjective:
    """``kind="latency"``: `objective` of requests within `threshold_secs`; ``kind="errors"``:
    `objective` of requests succeed."""

    name: str
    kind: str
    objective: float
    threshold_secs: float | None = None

    def __post_init__(self):
        if self.kind not in ("latency", "errors"):
            raise ValueError(f"SLO kind must be 'latency' or 'errors', not {self.kind!r}")
        if not 0.0 < self.objective < 1.0:
            raise ValueError(f"SLO objective must be in (0, 1), not {self.objective}")
        if self.kind == "latency" and (self.threshold_secs is None or self.threshold_secs <= 0):
            raise ValueError("a latency SLO needs threshold_secs > 0")


DEFAULT_OBJECTIVES = (
    SloObjective("latency", "latency", 0.99, 0.1),
    SloObjective("availability", "errors", 0.999),
)
ERROR_REASONS = ("internal", "timeout", "rejected")


@dataclass
class _Sample:
    t: float
    total: float
    errors: float
    buckets: tuple[float, ...]  # per-bucket (not cumulative) counts


def _increase(new: float, old: float) -> float:
    return new - old if new >= old else new  # a reset: the counter restarted from 0


class _Tier:
    """Samples at least `res` seconds apart (but always the newest), covering `keep` seconds."""

    __slots__ = ("keep", "res", "samples")

    def __init__(self, res: float, keep: float):
        self.res, self.keep, self.samples = res, keep, deque()

    def add(self, s: _Sample) -> None:
        q = self.samples
        if len(q) >= 2 and s.t - q[-2].t < self.res:
            q[-1] = s
        else:
            q.append(s)
        while len(q) >= 2 and q[1].t <= s.t - self.keep:  # one sample older than `keep` stays
            q.popleft()


@dataclass
class _Series:
    bounds: tuple[float, ...]
    tiers: list = field(default_factory=list)


class SloTracker:
    """Samples of cumulative counters per model version, and the SLOs computed over windows."""

    def __init__(
        self,
        objectives: Sequence[SloObjective] = DEFAULT_OBJECTIVES,
        burn_windows: Sequence[BurnWindow] = DEFAULT_BURN_WINDOWS,
        resolution_secs: float = 10.0,
        quantiles: Sequence[float] = (0.5, 0.99),
        max_versions: int = 64,
        clock: Callable[[], float] = time.time,
    ):
        self.objectives = tuple(objectives)
        self.burn_windows = tuple(burn_windows)
        self.resolution_secs = float(resolution_secs)
        self.quantiles = tuple(quantiles)
        self.max_versions = max_versions
        self.clock = clock
        self.windows = sorted({w for b in self.burn_windows for w in (b.long_secs, b.short_secs)})
        self.horizon = max(self.windows) if self.windows else 3600.0
        # Two tiers bound the memory: samples every resolution_secs for the windows that 1,000 of
        # them cover, and about 1,000 coarser samples for the longest windows.
        fine_keep = min(self.horizon, 1000 * self.resolution_secs)
        self._tier_spec = [(self.resolution_secs, fine_keep)]
        if fine_keep < self.horizon:
            self._tier_spec.append((max(self.resolution_secs, self.horizon / 1000), self.horizon))
        self._series: OrderedDict[tuple[str, str], _Series] = OrderedDict()
        self._lock = threading.Lock()

    def sample(
        self,
        model: str,
        version: str,
        total: float,
        errors: float,
        bounds: Sequence[float],
        counts: Sequence[float],
        now: float | None = None,
    ) -> None:
        """Record cumulative counters: requests (`total`, successes and failures), failed
        requests counted as errors, and the request-duration histogram (per-bucket counts)."""
        t = self.clock() if now is None else float(now)
        key = (model, str(version))
        s = _Sample(t, float(total), float(errors), tuple(float(c) for c in counts))
        with self._lock:
            series = self._series.get(key)
            if series is None or tuple(series.bounds) != tuple(float(b) for b in bounds):
                series = self._series[key] = _Series(tuple(float(b) for b in bounds), [_Tier(r, k) for r, k in self._tier_spec])
                while len(self._series) > self.max_versions:
                    self._series.popitem(last=False)
            self._series.move_to_end(key)
            for tier in series.tiers:
                tier.add(s)

    def sample_families(
        self, families: Iterable[Family], now: float | None = None, error_reasons: Sequence[str] = ERROR_REASONS
    ) -> None:
        """Sample from the server's own families: parity_request_success_total,
        parity_request_failure_total{reason} and parity_request_duration_seconds."""
        by_name = {f.name: f for f in families}
        ok: dict[tuple[str, str], float] = {}
        fail: dict[tuple[str, str], float] = {}
        err: dict[tuple[str, str], float] = {}
        hist: dict[tuple[str, str], object] = {}
        for labels, v in getattr(by_name.get("parity_request_success_total"), "samples", {}).items():
            d = dict(labels)
            ok[(d.get("model", ""), d.get("version", ""))] = float(v)
        for labels, v in getattr(by_name.get("parity_request_failure_total"), "samples", {}).items():
            d = dict(labels)
            key = (d.get("model", ""), d.get("version", ""))
            fail[key] = fail.get(key, 0.0) + float(v)
            if d.get("reason") in error_reasons:
                err[key] = err.get(key, 0.0) + float(v)
        for labels, h in getattr(by_name.get("parity_request_duration_seconds"), "samples", {}).items():
            d = dict(labels)
            hist[(d.get("model", ""), d.get("version", ""))] = h
        for key in set(ok) | set(fail):
            if not key[0]:
                continue  # server-level failures (unknown model): no version to hold to an SLO
            h = hist.get(key)
            bounds = tuple(h.bounds) if h is not None else ()
            counts = list(h.counts) if h is not None else [0.0]
            self.sample(key[0], key[1], ok.get(key, 0.0) + fail.get(key, 0.0), err.get(key, 0.0), bounds, counts, now)

    def _window_delta(self, series: _Series, secs: float, now: float) -> dict | None:
        tier = next((tr for tr in series.tiers if tr.keep >= secs), series.tiers[-1])
        q = tier.samples
        if len(q) < 2:
            return None
        last = q[-1]
        start = None
        for s in q:  # the newest sample at or before the window's start; else the oldest
            if s.t <= now - secs:
                start = s
            else:
                break
        if start is None:
            start = q[0]
        if start is last:
            return None
        buckets = [_increase(a, b) for a, b in zip(last.buckets, start.buckets)]
        return {
            "secs": secs,
            "covered_secs": last.t - start.t,
            "total": _increase(last.total, start.total),
            "errors": _increase(last.errors, start.errors),
            "buckets": buckets,
        }

    def evaluate(self, model: str, version: str, now: float | None = None) -> dict | None:
        """The SLO report of one model version (None when it was never sampled)."""
        with self._lock:
            series = self._series.get((model, str(version)))
            if series is None:
                return None
            t = self.clock() if now is None else now
            deltas = {w: self._window_delta(series, w, t) for w in self.windows}
            bounds = series.bounds
        windows = []
        for w in self.windows:
            d = deltas[w]
            entry = {"window": _dur(w), "secs": w, "covered_secs": None, "requests": None, "errors": None, "latency": {}}
            if d is not None:
                entry.update(covered_secs=d["covered_secs"], requests=d["total"], errors=d["errors"])
                if bounds and sum(d["buckets"]) > 0:
                    entry["latency"] = {str(q): histogram_quantile(q, bounds, d["buckets"]) for q in self.quantiles}
            windows.append(entry)
        objectives = []
        for o in self.objectives:
            burn: dict[float, float | None] = {}
            ratios: dict[str, float | None] = {}
            for w in self.windows:
                d = deltas[w]
                if d is None:
                    burn[w] = None
                    ratios[_dur(w)] = None
                    continue
                if o.kind == "errors":
                    bad, total = d["errors"], d["total"]
                else:
                    total = float(sum(d["buckets"])) if bounds else 0.0  # no histogram: no verdict
                    bad = total - count_le(o.threshold_secs, bounds, d["buckets"]) if bounds else 0.0
                burn[w] = burn_rate(bad, total, o.objective)
                ratios[_dur(w)] = (bad / total) if total > 0 else None
            rules = evaluate_burn(burn, self.burn_windows)
            objectives.append({
                "name": o.name, "kind": o.kind, "objective": o.objective, "threshold_secs": o.threshold_secs,
                "bad_ratio": ratios, "burn_rate": {_dur(w): burn[w] for w in self.windows},
                "rules": rules, "firing": [r["severity"] for r in rules if r["firing"]],
            })  # fmt: skip
        return {"model": model, "version": str(version), "windows": windows, "objectives": objectives}

    def report(self, now: float | None = None) -> list[dict]:
        with self._lock:
            keys = sorted(self._series)
        return [r for r in (self.evaluate(m, v, now) for m, v in keys) if r is not None]

    def families(self, now: float | None = None) -> list[Family]:
        burn = Family(
            "parity_slo_burn_rate",
            "gauge",
            "Error-budget burn rate of each SLO over each window (1 = the budget lasts exactly the SLO period).",
        )
        ratio = Family("parity_slo_bad_ratio", "gauge", "Share of requests that broke each SLO over each window.")
        lat = Family(
            "parity_slo_latency_seconds",
            "gauge",
            "Request-duration quantiles over each window, from the request-duration histogram.",
        )
        alarm = Family("parity_slo_alarm", "gauge", "1 while a multi-window burn-rate rule of the SLO fires, by severity.")
        for r in self.report(now):
            lab = (("model", r["model"]), ("version", r["version"]))
            for w in r["windows"]:
                for q, v in w["latency"].items():
                    if v is not None:
                        lat.add(lab + (("quantile", q), ("window", w["window"])), v)
            for o in r["objectives"]:
                for wname, v in o["burn_rate"].items():
                    if v is not None:
                        burn.add(lab + (("slo", o["name"]), ("window", wname)), v)
                for wname, v in o["bad_ratio"].items():
                    if v is not None:
                        ratio.add(lab + (("slo", o["name"]), ("window", wname)), v)
                for sev in sorted({bw.severity for bw in self.burn_windows}):
                    alarm.add(lab + (("slo", o["name"]), ("severity", sev)), 1 if sev in o["firing"] else 0)
        return [burn, ratio, lat, alarm]


__all__ = [
    "BINARY_METRICS",
    "DEFAULT_BURN_WINDOWS",
    "DEFAULT_OBJECTIVES",
    "ERROR_REASONS",
    "FEEDBACK_RESULTS",
    "REGRESSION_METRICS",
    "TASKS",
    "BurnWindow",
    "PredictionLog",
    "RollingWindow",
    "SloObjective",
    "SloTracker",
    "binary_metrics",
    "burn_rate",
    "count_le",
    "evaluate_burn",
    "histogram_quantile",
    "infer_task",
    "regression_metrics",
    "roc_auc",
]  # fmt: skip
