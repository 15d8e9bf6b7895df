"""Monitoring end to end, with a real server process and real clients: a model whose version
carries a reference profile is binned per batch; windows of served traffic drawn like the training
data do not alarm, a shifted feature alarms in the first window after the shift (metrics, the
webhook, GET /v1/monitoring, the HTML report); late labels join the logged predictions over HTTP
and gRPC."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.http as httpclient

from parity._proto.parity.v1 import monitoring_pb2 as mpb
from parity._proto.parity.v1 import monitoring_pb2_grpc as mpb_grpc
from parity.testing.models import write_monitored_mlp
from parity.testing.server import ServerProcess, post_json, wait_for
from parity.testing.webhook import WebhookRecorder

SIZES = [4, 8, 1]
WINDOW = 200


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("monitoring")
    weights = write_monitored_mlp(d / "models", SIZES)
    with WebhookRecorder() as hook:
        args = ["--monitor-window-rows", str(WINDOW), "--alert-webhook", hook.url]
        with ServerProcess(d / "models", *args) as server:
            yield server, weights, d, hook


def send(server, x: np.ndarray, request_id: str = "") -> np.ndarray:
    client = httpclient.InferenceServerClient(server.http_url)
    t = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    t.set_data_from_numpy(x)
    return client.infer("mlp", [t], request_id=request_id).as_numpy("OUTPUT0")


def monitoring(server) -> dict:
    with urllib.request.urlopen(f"http://{server.http_url}/v1/monitoring", timeout=10) as r:
        return json.loads(r.read())


def test_drift_is_caught_in_the_first_window_after_a_shift_and_not_before(served):
    server, weights, d, hook = served
    rng = np.random.default_rng(7)  # a fixed stream: windows and calibration are deterministic
    for _ in range(5 * WINDOW // 20):  # five windows drawn like the training data
        send(server, rng.standard_normal((20, 4)).astype(np.float32))
    entry = wait_for(lambda: (m := monitoring(server)["models"]) and m[0]["windows_closed"]["count"] >= 5 and m[0])
    assert entry["model"] == "mlp" and entry["version"] == "1" and entry["rows"] >= 5 * WINDOW
    assert entry["alarms"] == 0, [w["report"].get("drifted") for w in entry["windows"]]
    assert hook.received == []

    for _ in range(WINDOW // 20):  # one window with feature f0 shifted by half a standard deviation
        x = rng.standard_normal((20, 4)).astype(np.float32)
        x[:, 0] += 0.5
        send(server, x)
    entry = wait_for(lambda: (m := monitoring(server)["models"][0])["windows_closed"]["count"] >= 6 and m)
    assert entry["alarms"] == 1
    last = [w for w in entry["windows"] if w["kind"] == "count"][-1]["report"]
    assert last["features"]["f0"]["alarm"] is True
    assert not any(last["features"][f]["alarm"] for f in ("f1", "f2", "f3"))
    # the alert: a structured payload at the webhook
    alert = hook.wait_for()
    assert alert["alert"]["model"] == "mlp" and "f0" in json.dumps(alert)
    # the metrics
    with urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'parity_drift_alarm{model="mlp",version="1",feature="f0"} 1' in text
    assert 'parity_drift_alarm{model="mlp",version="1",feature="f1"} 0' in text
    assert 'parity_monitoring_errors_total{model="mlp",version="1"} 0' in text
    assert 'parity_data_quality_flag{model="mlp",version="1",feature="f0",check="outside_range"}' in text
    assert 'parity_data_quality_rate{model="mlp",version="1",feature="f0",check="missing_rate"} 0' in text
    assert "# TYPE parity_slo_" in text  # the SLO tracker samples the request metrics
    assert "slo" in monitoring(server) and "slo" in monitoring(server)["models"][0]
    # the HTML report from the live server
    out = d / "report.html"
    proc = subprocess.run([sys.executable, "-m", "parity", "monitor", "report", "--server", f"http://{server.http_url}", "--output", str(out)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    html = out.read_text()
    assert "<svg" in html and "f0" in html and "mlp" in html


def test_late_labels_join_logged_predictions_over_http_and_grpc(served):
    server, weights, _, _ = served
    rng = np.random.default_rng(3)
    ids = [f"req-{i}" for i in range(40)]
    scores = {}
    for rid in ids:
        scores[rid] = send(server, rng.standard_normal((2, 4)).astype(np.float32), request_id=rid)[:, 0]

    def post(doc):
        return post_json(server.http_url, "/v1/feedback", doc)

    for rid in ids[:20]:  # labels: the sign of the score, so the rolling RMSE is known exactly
        status, doc = post({"id": rid, "labels": [float(s > 0) for s in scores[rid]]})
        assert status == 200 and doc["status"] == "joined" and doc["rows"] == 2, doc
    assert post({"id": ids[0], "labels": [0.0, 0.0]})[1]["status"] in ("duplicate", "partial")
    assert post({"id": "never-served", "labels": [1.0]})[0] == 404
    assert post({"id": ids[1], "labels": ["x"]})[0] == 400
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = mpb_grpc.MonitoringServiceStub(channel)
        for rid in ids[20:]:
            r = stub.Feedback(mpb.FeedbackRequest(id=rid, labels=[float(s > 0) for s in scores[rid]]), timeout=10)
            assert r.status == "joined" and r.joined == 2 and r.model == "mlp"
        with pytest.raises(grpc.RpcError) as info:
            stub.Feedback(mpb.FeedbackRequest(id="never-served", labels=[1.0]), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    perf = monitoring(server)["performance"]
    (mlp,) = [m for m in perf["models"] if m["model"] == "mlp"]
    assert mlp["labelled_rows_total"] == 80 and mlp["rows"] == 80, mlp
    # scores are not probabilities: the task is taken as regression, RMSE against the labels
    preds = np.concatenate([scores[r] for r in ids]).astype(np.float64)
    labels = (preds > 0).astype(np.float64)
    assert mlp["task"] == "regression"
    assert abs(mlp["metrics"]["rmse"] - float(np.sqrt(np.mean((preds - labels) ** 2)))) < 1e-5
