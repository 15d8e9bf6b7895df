"""The monitoring tap: every batch a model version runs is binned against the version's reference
profile, into windows that are tested for drift when they close.

A version is monitored when it has a reference profile: `profile.json` in its version directory
(a model repository), or the registry version's profile (serving from the registry, written next
to the fetched version as `profile.<version>.json`).  What is binned:

- features: the model input that matches the profile's features -- for a feature-joined model the
  feature tensor the server assembled; otherwise the model's 2-D input whose width is the number
  of profile features (columns in the profile's order);
- outputs: the model outputs named in the profile (single-column outputs, e.g. a score).

Per batch (`observe`, in the runner's thread or inline on the loop, right after the model ran):
the counts are added, in one compiled pass, to the current *count window* (the last
`window_rows` rows) and *time window* (`time_window_secs`).  The tap never blocks or fails a
request: its errors are counted (`parity_monitoring_errors_total`) and logged, and the request
goes on.  When a window closes it is handed to a background thread that tests it
(`parity.monitoring.drift.evaluate_window`, with thresholds calibrated once per profile and window
size for the configured false-alarm rate), keeps its report (the last `keep_windows` per kind),
updates the drift metrics and, on an alarm, fires the alerts.  Counts are mergeable: workers and
replicas can be combined with `Counts.merge`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("parity.monitoring")

_EVALUATOR = None  # one background thread for every version's window tests
FLUSH_ROWS = 256  # batches are gathered up to this many rows, then counted in one pass
_EVALUATOR_LOCK = threading.Lock()


def _evaluator() -> ThreadPoolExecutor:
    global _EVALUATOR
    with _EVALUATOR_LOCK:
        if _EVALUATOR is None:
            _EVALUATOR = ThreadPoolExecutor(1, thread_name_prefix="parity-drift")
        return _EVALUATOR


@dataclass(frozen=True)
class MonitorConfig:
    window_rows: int = 5000
    time_window_secs: float = 300.0
    false_alarm_rate: float = 0.01
    correction: str = "bh"
    keep_windows: int = 20


class VersionMonitor:
    def __init__(self, model: str, version: str, profile: dict, input_index: int, output_names: list[str], config: MonitorConfig, alerter=None):
        from parity.monitoring.drift import Counts, DriftConfig

        self.model, self.version = model, version
        self.profile = profile
        self.config = config
        self.drift_config = DriftConfig(correction=config.correction)
        self.input_index = input_index
        self.outputs = output_names  # profile outputs the model has
        self._new = lambda: Counts.for_profile(profile)
        # Each batch is counted once, into the count window.  The time window is made of count
        # windows: the counts of the count windows closed since it opened (`time_acc`) plus, when
        # it closes, what the open count window gained since then (current - `time_included`).
        self.count_window = self._new()
        self.time_acc = self._new()
        self.time_included = self._new()
        self._single_output = len(output_names) == 1 and output_names == list(profile.get("output_names") or [])
        self._out_name = output_names[0] if self._single_output else None
        self._window_rows, self._time_secs = config.window_rows, config.time_window_secs
        # small batches are gathered and counted together (one compiled pass per FLUSH_ROWS rows:
        # the per-call overhead of counting is paid once, not per batch)
        self._pending: list = []
        self._pending_rows = 0
        self._n_features = len(profile.get("feature_names") or profile.get("features") or {})
        self.time_started = time.time()
        self.count_started = time.time()
        self.lock = threading.Lock()
        self.windows: dict[str, deque] = {"count": deque(maxlen=config.keep_windows), "time": deque(maxlen=config.keep_windows)}
        self.rows = 0
        self.errors = 0
        self.closed = {"count": 0, "time": 0}
        self.alarms = 0
        self.alerter = alerter
        self.last_alarm: dict | None = None
        # with --workers N, a worker other than the hub hands its closed windows to this hook
        # (parity.serving.workers) instead of testing them itself
        self.forward: Callable | None = None
        self.peer_rows = 0  # rows of the windows other workers sent here (the hub)

    # -- the request path --------------------------------------------------------------------------

    def observe(self, inputs: list[np.ndarray], output_names: list[str], results: list[np.ndarray]) -> None:
        """Count one batch (never raises)."""
        try:
            x = inputs[self.input_index]
            if x.ndim != 2 or x.shape[1] != self._n_features:  # checked here: a gathered batch must be countable
                if x.ndim == 1:
                    x = x.reshape(-1, 1)
                if x.ndim != 2 or x.shape[1] != self._n_features:
                    raise ValueError(f"the monitored input has shape {list(x.shape)}; the profile has {self._n_features} features")
            outs = None
            if self._single_output:  # one output column: gathered as is, cut to [rows, 1] when counted
                try:
                    outs = results[output_names.index(self._out_name)]
                except ValueError:
                    pass  # not asked for by this batch's requests: its features are counted alone
                else:
                    if outs.ndim == 0 or len(outs) != len(x):
                        raise ValueError(f"output {self._out_name} has shape {list(outs.shape)} for {len(x)} input rows")
            elif self.outputs:
                outs = {}
                for name, arr in zip(output_names, results):
                    if name in self.outputs:
                        outs[name] = arr.reshape(arr.shape[0], -1)[:, 0] if arr.ndim > 1 else arr
            closed = []
            with self.lock:
                rows = len(x)
                self.rows += rows
                if outs is None or not isinstance(outs, dict):
                    self._pending.append((x, outs))
                    pending = self._pending_rows = self._pending_rows + rows
                    if (pending < FLUSH_ROWS and self.count_window.rows + pending < self._window_rows
                            and time.time() - self.time_started < self._time_secs):  # fmt: skip
                        return
                    self._flush()
                else:
                    self._flush()
                    self.count_window.add(features=x, outputs=outs)
                now = time.time()
                if self.count_window.rows >= self.config.window_rows:
                    done = self.count_window
                    closed.append(("count", done, self.count_started, now))
                    self.time_acc += _minus(done, self.time_included)
                    self.count_window, self.count_started, self.time_included = self._new(), now, self._new()
                if now - self.time_started >= self.config.time_window_secs:
                    window = self.time_acc
                    window += _minus(self.count_window, self.time_included)
                    if window.rows:
                        closed.append(("time", window, self.time_started, now))
                    self.time_included = self.count_window.copy()
                    self.time_acc, self.time_started = self._new(), now
            for kind, counts, start, end in closed:
                if self.forward is not None:
                    self.forward(self, kind, counts, start, end)
                else:
                    _evaluator().submit(self._evaluate, kind, counts, start, end)
        except Exception:  # noqa: BLE001 - monitoring never fails a request
            self.errors += 1
            if self.errors <= 3 or self.errors % 1000 == 0:
                log.exception("monitoring %s/%s: a batch could not be counted (%d so far)", self.model, self.version, self.errors)

    def _flush(self) -> None:
        """Count the gathered batches (under the lock)."""
        pending, self._pending, self._pending_rows = self._pending, [], 0
        if not pending:
            return
        if len(pending) == 1:
            x, outs = pending[0]
        else:
            x = np.concatenate([p[0] for p in pending])
            outs = None if pending[0][1] is None else np.concatenate([p[1] for p in pending])
        if outs is not None:
            outs = outs.reshape(len(outs), -1)[:, :1]
        self.count_window.add(features=x, outputs=outs)

    # -- closed windows (background thread) --------------------------------------------------------

    def evaluate_later(self, kind: str, counts, start: float, end: float) -> None:
        """Test a closed window on the drift thread."""
        _evaluator().submit(self._evaluate, kind, counts, start, end)

    def receive(self, kind: str, counts, start: float, end: float) -> None:
        """A window another worker closed (this is the hub): tested like one of ours.  Each
        worker's time windows are tested as they close; count windows are the same size in every
        worker, so the calibrated thresholds hold for all."""
        if kind not in self.windows:
            raise ValueError(f"unknown window kind {kind!r}")
        with self.lock:
            self.peer_rows += int(counts.rows) if kind == "count" else 0
        self.evaluate_later(kind, counts, start, end)

    def _evaluate(self, kind: str, counts, start: float, end: float) -> None:
        from parity.monitoring.drift import calibrate, evaluate_window

        try:
            cal = calibrate(self.profile, self.config.window_rows, self.config.false_alarm_rate)
            report = evaluate_window(self.profile, counts, cal, self.drift_config)
            # the report's detail is built when someone asks for it (GET /v1/monitoring, an alarm)
            entry = _Window(kind, int(counts.rows), _iso(start), _iso(end), report)
        except Exception:  # noqa: BLE001
            self.errors += 1
            log.exception("monitoring %s/%s: a %s window could not be tested", self.model, self.version, kind)
            return
        with self.lock:
            self.windows[kind].append(entry)
            self.closed[kind] += 1
        if report.drift:
            self.alarms += 1
            self.last_alarm = entry
            log.warning(
                "drift in %s/%s (%s window of %d rows): %s", self.model, self.version, kind, counts.rows, ", ".join(report.drifted) or "?"
            )
            if self.alerter is not None:
                try:
                    from parity.monitoring.alerts import alerts_from_model

                    for alert in alerts_from_model(self.entry(latest_only=True)):
                        self.alerter.fire(alert)
                except Exception:  # noqa: BLE001
                    log.exception("alerting on drift in %s/%s failed", self.model, self.version)

    # -- reporting ---------------------------------------------------------------------------------

    def entry(self, latest_only: bool = False) -> dict:
        """This version's part of GET /v1/monitoring (parity.monitoring.report's shape)."""
        with self.lock:
            windows = []
            for kind in ("count", "time"):
                ws = list(self.windows[kind])
                windows += ws[-1:] if latest_only else ws
            current = {"count": int(self.count_window.rows), "time": int(self.time_acc.rows + self.count_window.rows - self.time_included.rows)}
        return {
            "model": self.model, "version": self.version, "rows": self.rows + self.peer_rows, "errors": self.errors,
            "windows_closed": dict(self.closed), "alarms": self.alarms, "open_windows": current,
            "window_rows": self.config.window_rows, "time_window_secs": self.config.time_window_secs,
            "false_alarm_rate": self.config.false_alarm_rate, "windows": [_public(w) for w in windows],
        }  # fmt: skip


class _Window:
    """A tested window; its JSON is made on first use and kept."""

    __slots__ = ("kind", "rows", "start", "end", "report", "_doc")

    def __init__(self, kind, rows, start, end, report):
        self.kind, self.rows, self.start, self.end, self.report = kind, rows, start, end, report
        self._doc = None

    def doc(self) -> dict:
        if self._doc is None:
            self._doc = {"kind": self.kind, "rows": self.rows, "start": self.start, "end": self.end, "report": self.report.to_monitoring_dict()}
        return self._doc


def _public(window) -> dict:
    return window.doc()


def _minus(a, b):
    """a - b for counts of one profile (b counted earlier into the same window as a)."""
    out = a.copy()
    out.bins -= b.bins
    out.missing -= b.missing
    out.below -= b.below
    out.above -= b.above
    out.rows -= b.rows
    return out


def counts_doc(counts) -> dict:
    """A window's counts as JSON (handed from a worker to the hub)."""
    return {"bins": counts.bins.tolist(), "missing": counts.missing.tolist(), "below": counts.below.tolist(),
            "above": counts.above.tolist(), "rows": int(counts.rows)}  # fmt: skip


def counts_from_doc(doc: dict, profile: dict):
    """`counts_doc`'s inverse, checked against the profile's layout."""
    from parity.monitoring.drift import Counts

    out = Counts.for_profile(profile)
    for name in ("bins", "missing", "below", "above"):
        arr = np.asarray(doc[name], dtype=np.int64)
        if arr.shape != getattr(out, name).shape:
            raise ValueError(f"window counts '{name}' have shape {list(arr.shape)}; this version's profile needs {list(getattr(out, name).shape)}")
        setattr(out, name, arr)
    out.rows = int(doc["rows"])
    return out


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def build_monitor(model: str, version: str, version_dir: Path, model_inputs, model_outputs, *, feature_input: str | None, config: MonitorConfig, alerter=None) -> VersionMonitor | None:
    """The tap of a version, if it has a reference profile whose features the model's input
    carries; None otherwise (logged when a profile does not fit)."""
    path = version_dir / "profile.json"
    if not path.exists():
        path = version_dir.parent / f"profile.{version_dir.name}.json"
        if not path.exists():
            return None
    try:
        profile = json.loads(path.read_text())
        n_features = len(profile.get("feature_names") or profile.get("features") or {})
    except (OSError, ValueError) as e:
        log.error("model %s version %s: the reference profile %s cannot be read (%s); not monitored", model, version, path, e)
        return None
    index = None
    for i, spec in enumerate(model_inputs):
        if feature_input is not None:
            if spec.name == feature_input:
                index = i
                break
        elif len(spec.shape) == 1 and spec.shape[0] == n_features and spec.datatype not in ("BYTES",):
            index = i
            break
    if index is None:
        log.error("model %s version %s: no input carries the profile's %d features; not monitored", model, version, n_features)
        return None
    outputs = [t.name for t in model_outputs if t.name in (profile.get("output_names") or profile.get("outputs") or {})]
    return VersionMonitor(model, version, profile, index, outputs, config, alerter)


def families(monitors: list[VersionMonitor]) -> list:
    """Prometheus families: rows monitored, errors, windows and alarms, and the latest window's
    drift statistics and flags per feature (bounded: the profile's columns)."""
    from parity.monitoring.metrics import Family

    rows = Family("parity_monitored_rows_total", "counter", "Rows counted by the monitoring tap.")
    errors = Family("parity_monitoring_errors_total", "counter", "Batches the monitoring tap could not count or windows it could not test (requests were not affected).")
    windows = Family("parity_drift_windows_total", "counter", "Monitoring windows closed and tested, by kind (count, time).")
    alarms = Family("parity_drift_alarms_total", "counter", "Windows whose drift test alarmed.")
    alarm = Family("parity_drift_alarm", "gauge", "1 when the latest count window of the version drifted in this column.")
    psi = Family("parity_drift_psi", "gauge", "The latest count window's population stability index per column.")
    quality = Family("parity_data_quality_flag", "gauge", "1 when the latest count window flags a data-quality check of this column.")
    rate = Family("parity_data_quality_rate", "gauge", "The latest count window's share of rows concerned by a data-quality check (missing, outside the training range, unseen category).")
    for m in monitors:
        lab = (("model", m.model), ("version", m.version))
        rows.add(lab, m.rows)
        errors.add(lab, m.errors)
        for kind, n in m.closed.items():
            windows.add(lab + (("kind", kind),), n)
        alarms.add(lab, m.alarms)
        with m.lock:
            latest = m.windows["count"][-1] if m.windows["count"] else None
        if latest is None:
            continue
        report = latest.doc()["report"]
        for part in ("features", "outputs"):
            for name, col in (report.get(part) or {}).items():
                flab = lab + (("feature", name),)
                alarm.add(flab, 1 if col.get("alarm") else 0)
                value = (col.get("statistics") or {}).get("psi")
                if isinstance(value, (int, float)):
                    psi.add(flab, value)
                q = col.get("quality") or {}
                flags = q.get("flags") or []
                for check, flag, share in _CHECKS:
                    quality.add(flab + (("check", check),), 1 if flag in flags else 0)
                    value = q.get(share)
                    if isinstance(value, (int, float)):
                        rate.add(flab + (("check", check),), value)
    return [rows, errors, windows, alarms, alarm, psi, quality, rate]


# (the `check` label, the report's flag, the report's rate): the names the alert rules use
_CHECKS = (("missing_rate", "missing_rate", "missing_rate"), ("outside_range", "out_of_range", "out_of_range_rate"), ("unseen", "unseen_category", "unseen_rate"))


__all__ = ["MonitorConfig", "VersionMonitor", "build_monitor", "families"]
