"""The monitoring tap: each batch is counted once, count windows close every N rows, time windows
are assembled exactly from count windows, and a batch the tap cannot count never raises."""

from __future__ import annotations

import time

import numpy as np
import pytest

from parity.monitoring.drift import Counts
from parity.monitoring.profile import build_profile
from parity.monitoring.tap import MonitorConfig, VersionMonitor


def _monitor(window_rows: int, time_secs: float) -> tuple[VersionMonitor, dict]:
    ref = np.random.default_rng(0).standard_normal((2000, 3)).astype(np.float32)
    profile = build_profile({f"f{i}": ref[:, i] for i in range(3)}, {"OUT": ref[:, 0] * 2})
    m = VersionMonitor("m", "1", profile, 0, ["OUT"], MonitorConfig(window_rows=window_rows, time_window_secs=time_secs))
    return m, profile


def _wait(m: VersionMonitor, kind: str, n: int) -> list:
    deadline = time.monotonic() + 60
    while len(m.windows[kind]) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return list(m.windows[kind])


def test_count_windows_close_every_n_rows_and_time_windows_add_up_exactly():
    m, profile = _monitor(window_rows=100, time_secs=3600)
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((int(k), 3)).astype(np.float32) for k in rng.integers(1, 40, 60)]
    everything = Counts.for_profile(profile)
    for x in batches:
        m.observe([x], ["OUT"], [x[:, :1] * 2])
        everything.add(features=x, outputs=x[:, :1] * 2)
    total = sum(len(x) for x in batches)
    expected, acc = [], 0  # a window closes with the batch that takes it to 100 rows or more
    for x in batches:
        acc += len(x)
        if acc >= 100:
            expected.append(acc)
            acc = 0
    closed = _wait(m, "count", len(expected))
    assert [w.rows for w in closed] == expected
    # close the time window now: it holds every batch so far, counted exactly once
    m.time_started -= 7200
    m.observe([batches[0][:1]], ["OUT"], [batches[0][:1, :1] * 2])
    everything.add(features=batches[0][:1], outputs=batches[0][:1, :1] * 2)
    (tw,) = _wait(m, "time", 1)
    assert tw.rows == total + 1 == m.rows
    assert m.errors == 0
    # the next time window starts from zero and stays exact
    m.time_started -= 7200
    x = batches[1]
    m.observe([x], ["OUT"], [x[:, :1] * 2])
    second = _wait(m, "time", 2)[1]
    assert second.rows == len(x)


def test_a_batch_that_cannot_be_counted_is_counted_as_an_error_not_raised():
    m, _ = _monitor(window_rows=100, time_secs=3600)
    m.observe([np.zeros((4, 7), dtype=np.float32)], ["OUT"], [np.zeros((4, 1), dtype=np.float32)])  # 7 columns, the profile has 3
    m.observe([], [], [])
    assert m.errors == 2 and m.rows == 0
    entry = m.entry()
    assert entry["errors"] == 2 and entry["windows"] == []


def test_a_forwarded_window_is_tested_by_the_receiving_monitor_with_the_same_verdict():
    """With --workers N, a worker hands its closed windows to the hub's monitor of the same
    version (as JSON); the hub's report equals the one the worker would have made."""
    import json

    from parity.monitoring.tap import counts_doc, counts_from_doc

    worker, profile = _monitor(window_rows=100, time_secs=3600)
    hub, _ = _monitor(window_rows=100, time_secs=3600)
    handed = []
    worker.forward = lambda m, kind, counts, start, end: handed.append((kind, json.loads(json.dumps(counts_doc(counts))), start, end))
    x = np.random.default_rng(5).standard_normal((100, 3)).astype(np.float32)
    x[:, 1] += 2.0  # drifted
    worker.observe([x], ["OUT"], [x[:, :1] * 2])
    assert [h[0] for h in handed] == ["count"] and not worker.windows["count"]  # not tested in the worker
    kind, doc, start, end = handed[0]
    hub.receive(kind, counts_from_doc(doc, hub.profile), start, end)
    (tested,) = _wait(hub, "count", 1)
    alone, _ = _monitor(window_rows=100, time_secs=3600)  # the same batch in a lone server
    alone.observe([x], ["OUT"], [x[:, :1] * 2])
    (own,) = _wait(alone, "count", 1)
    assert tested.rows == 100 and hub.entry()["rows"] == 100  # the hub counts rows handed to it
    assert tested.report.drifted == own.report.drifted == ["features/f1"]
    assert tested.report.to_monitoring_dict() == own.report.to_monitoring_dict()
    with pytest.raises(ValueError, match="shape"):
        counts_from_doc({**doc, "missing": [0]}, hub.profile)

