"""Monitoring with `--workers 2`: the kernel spreads connections over both workers, yet late labels
join whichever worker logged the request, drift windows from both are tested in one place (worker
0, the hub), the SLOs count every worker's requests, and every worker answers GET /v1/monitoring
with the same document.  Each request and each feedback call below opens its own connection, so
both workers take part."""

from __future__ import annotations

import json
import re
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.http as httpclient

from parity._proto.parity.v1 import monitoring_pb2 as mpb
from parity._proto.parity.v1 import monitoring_pb2_grpc as mpb_grpc
from parity.testing.models import write_monitored_mlp
from parity.testing.server import ServerProcess, post_json, wait_for

SIZES = [4, 8, 1]
WINDOW = 200


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("workers-monitoring")
    write_monitored_mlp(d / "models", SIZES)
    args = ["--workers", "2", "--monitor-window-rows", str(WINDOW), "--slo-sample-secs", "0.5"]
    with ServerProcess(d / "models", *args) as server:
        # ready means one worker listens; wait for both, so that connections spread over them
        wait_for(lambda: server.output().count("serving 1 model(s)") == 2, what="both workers listening")
        yield server
    assert server.returncode == 0


def send(server, x: np.ndarray, request_id: str = "") -> np.ndarray:
    client = httpclient.InferenceServerClient(server.http_url)  # a new connection: either worker
    try:
        t = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        t.set_data_from_numpy(x)
        return client.infer("mlp", [t], request_id=request_id).as_numpy("OUTPUT0")
    finally:
        client.close()


def get_json(server, path: str) -> dict:
    with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=10) as r:
        return json.loads(r.read())


def metric(server, name: str, labels: str) -> float | None:
    with urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def post_feedback(server, doc: dict) -> tuple[int, dict]:
    return post_json(server.http_url, "/v1/feedback", doc)


def held(server, expected: list[tuple[str, str, float]]) -> None:
    """Each (metric, labels, value) reaches its value in /metrics and keeps it over scrapes that
    either worker may answer (a worker shows the others' samples as they last published them,
    once a second: so wait for the values, then for a publication, then check again)."""
    for name, labels, value in expected:
        wait_for(lambda: metric(server, name, labels) == value, what=f"{name}{{{labels}}} == {value}")
    published_since(server)
    for _ in range(4):
        for name, labels, value in expected:
            assert metric(server, name, labels) == value, (name, labels)


def published_since(server) -> None:
    """Wait until every worker has published its samples again (once a second) since this call:
    from then on a scrape sums what each had counted by now, whichever worker answers it."""
    marks = {m["worker"]: m["publications"] for m in members(server)}
    wait_for(lambda: all(m["publications"] > marks.get(m["worker"], 0) for m in members(server)), timeout=10, what="a publication by every worker")


def members(server) -> list[dict]:
    return get_json(server, "/v1/monitoring")["workers"]["members"]


def test_late_labels_join_in_whichever_worker_logged_the_request(served):
    server = served
    rng = np.random.default_rng(3)
    ids = [f"w-req-{i}" for i in range(60)]
    scores = {rid: send(server, rng.standard_normal((2, 4)).astype(np.float32), request_id=rid)[:, 0] for rid in ids}
    for rid in ids[:40]:  # each on its own connection: about half reach the other worker
        status, doc = post_feedback(server, {"id": rid, "labels": [float(s > 0) for s in scores[rid]]})
        assert status == 200 and doc["status"] == "joined" and doc["rows"] == 2 and doc["model"] == "mlp", doc
    for rid in ids[40:]:
        with grpc.insecure_channel(server.grpc_url) as channel:
            r = mpb_grpc.MonitoringServiceStub(channel).Feedback(mpb.FeedbackRequest(id=rid, labels=[float(s > 0) for s in scores[rid]]), timeout=10)
        assert r.status == "joined" and r.joined == 2 and r.model == "mlp"
    # a repeat is a duplicate wherever it lands; an id no worker served is unknown, once
    assert post_feedback(server, {"id": ids[0], "labels": [float(s > 0) for s in scores[ids[0]]]})[1]["status"] == "duplicate"
    assert post_feedback(server, {"id": "never-served", "labels": [1.0]})[0] == 404
    assert post_feedback(server, {"id": ids[1], "labels": [1.0, 0.0, 1.0]})[0] == 400  # 3 labels for 2 rows, said by the holder

    # every worker answers with the hub's rolling window: all 120 rows, one RMSE over all of them
    preds = np.concatenate([scores[r] for r in ids]).astype(np.float64)
    rmse = float(np.sqrt(np.mean((preds - (preds > 0)) ** 2)))
    for _ in range(6):
        perf = get_json(server, "/v1/monitoring")["performance"]
        (mlp,) = [m for m in perf["models"] if m["model"] == "mlp"]
        assert mlp["rows"] == 120 and mlp["labelled_rows_total"] == 120, mlp
        assert abs(mlp["metrics"]["rmse"] - rmse) < 1e-5
    # the two workers did hand work to each other, and kept nothing back from the hub
    # (the other worker's counters are as it last published them: wait for a publication)
    ms = wait_for(lambda: (ms := members(server)) and ms[-1]["forwarded"]["joined"] > 0 and ms, what="worker 1's joins in the hub")
    assert [m["worker"] for m in ms] == [0, 1]
    assert sum(m["feedback_joined_by_others"] for m in ms) > 0 and sum(m["feedback_joined_for_others"] for m in ms) > 0
    assert all(m["kept_locally"] == {"windows": 0, "joined": 0} for m in ms)
    # summed over the workers, each call is counted once, by its outcome
    held(server, [("parity_feedback_total", 'result="joined"', 60), ("parity_feedback_total", 'result="unknown"', 1),
                  ("parity_feedback_total", 'result="duplicate"', 1), ("parity_feedback_rows_total", 'model="mlp",version="1"', 120)])  # fmt: skip


def test_drift_windows_of_both_workers_are_tested_in_the_hub(served):
    server = served
    rng = np.random.default_rng(11)
    before = get_json(server, "/v1/monitoring/mlp")["models"][0]["windows_closed"]["count"]
    published_since(server)  # both workers' rows of the test before are in the sum
    rows_before = metric(server, "parity_monitored_rows_total", 'model="mlp",version="1"') or 0
    for _ in range(12 * WINDOW // 20):  # twelve windows' worth, f0 shifted by one standard deviation
        x = rng.standard_normal((20, 4)).astype(np.float32)
        x[:, 0] += 1.0
        send(server, x)
    # every row counted and published by both workers (a scrape sums their last publications)
    total = wait_for(lambda: (t := metric(server, "parity_monitored_rows_total", 'model="mlp",version="1"') or 0) >= rows_before + 12 * WINDOW and t,
                     what="the rows of both workers")  # fmt: skip
    # each worker closes a window per 200 of its own rows; at most one open window each
    expected = int(total) // WINDOW - 2
    entry = wait_for(lambda: (e := get_json(server, "/v1/monitoring/mlp")["models"][0])["windows_closed"]["count"] >= expected and e,
                     what=f"{expected} windows tested in the hub")  # fmt: skip
    assert entry["windows_closed"]["count"] - before >= 10
    # every shifted window alarms, from either worker (each worker's first may be partly the
    # unshifted rows of the test before)
    assert entry["alarms"] >= entry["windows_closed"]["count"] - before - 2, entry
    last = [w for w in entry["windows"] if w["kind"] == "count"][-1]["report"]
    assert last["features"]["f0"]["alarm"] is True
    wait_for(lambda: members(server)[1]["forwarded"]["windows"] >= 3, what="worker 1's windows in the hub")  # about half the traffic
    # the gauges are the hub's verdicts, not sums over workers (2 would mean both reported);
    # f1 is not shifted, but a window may still alarm on it by chance (the calibrated 1%)
    held(server, [("parity_drift_alarm", 'model="mlp",version="1",feature="f0"', 1)])
    assert metric(server, "parity_drift_alarm", 'model="mlp",version="1",feature="f1"') in (0, 1)


def test_slos_count_the_requests_of_every_worker(served):
    server = served

    def longest_window() -> dict | None:
        entry = get_json(server, "/v1/monitoring/mlp")["models"][0]
        windows = (entry.get("slo") or {}).get("windows") or []
        return windows[-1] if windows and windows[-1]["requests"] is not None else None

    def requests_in_longest_window() -> float | None:
        w = longest_window()
        return None if w is None else w["requests"]

    wait_for(longest_window, what="two SLO samples")
    # settle: every worker's earlier requests published, then sampled by the hub (its window
    # covers a later sample)
    published_since(server)
    covered = longest_window()["covered_secs"]
    wait_for(lambda: longest_window()["covered_secs"] > covered, what="an SLO sample after the publication")
    start = requests_in_longest_window()
    x = np.ones((1, 4), np.float32)
    for _ in range(50):
        send(server, x)
    # without the other worker's counters the hub would see only its own share of the 50
    wait_for(lambda: requests_in_longest_window() == start + 50, timeout=30, what="the SLO window to count all 50 requests")
