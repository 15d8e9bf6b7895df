"""End-to-end checks against the PyTriton peer: the peer itself, perf.run_perf, locust, the driver.

About a minute; skipped unless nvidia-pytriton is installed and perf_analyzer runs (bench/setup.sh).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bench import perf
from bench.pytriton_peer import PEER_ACCESS_TOKEN, access_headers
from bench.tests.conftest import free_port, needs_perf_analyzer, needs_pytriton, stop
from bench.v2_payload import Settings, build_request, decode_outputs

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [needs_pytriton, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def peer(mlp32_repo, tmp_path_factory):
    http_port, grpc_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("peer") / "peer.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "pytriton_peer.py"), "--model-repository", str(mlp32_repo),
             "--model", "mlp32", "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    target = perf.Target("peer", http_port, grpc_port, pid=proc.pid, headers=access_headers("http"),
                         grpc_headers=access_headers("grpc"))
    deadline = time.monotonic() + 120
    while "READY" not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "peer not ready in 120 s"
        time.sleep(0.25)
    assert target.is_ready() and target.is_ready("mlp32")
    yield {"proc": proc, "target": target, "log": log, "repo": mlp32_repo}
    if proc.poll() is None:
        stop(proc)


def post(url, body, headers):
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read(), dict(response.headers)


@pytest.mark.parametrize("binary", [False, True])
def test_peer_answers_like_onnx_runtime(peer, binary):
    target = peer["target"]
    meta = target.get_json("/v2/models/mlp32")
    assert meta["inputs"][0]["shape"] == [-1, 32]
    settings = Settings({"PARITY_BINARY": "1" if binary else "0", "PARITY_BATCH": "5"})
    body, headers = build_request(meta, settings, np.random.default_rng(3))
    if binary:
        length = int(headers["Inference-Header-Content-Length"])
        x = np.frombuffer(body[length:], dtype="<f4").reshape(5, 32)
    else:
        x = np.array(json.loads(body)["inputs"][0]["data"], dtype=np.float32).reshape(5, 32)
    raw, response_headers = post(f"{target.http_base}/v2/models/mlp32/infer", body, headers)
    got = decode_outputs(raw, response_headers)["OUTPUT0"]
    session = ort.InferenceSession(str(peer["repo"] / "mlp32" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    want = session.run(None, {"INPUT0": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_statistics_need_the_fixed_token(peer):
    target = peer["target"]
    url = f"{target.http_base}/v2/models/mlp32/stats"
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(url, timeout=5).close()
    assert target.success_count("mlp32") is not None
    assert access_headers("http") == {"triton-access-token": PEER_ACCESS_TOKEN}


@needs_perf_analyzer
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_run_perf_against_the_peer(peer, protocol):
    result = perf.run_perf(peer["target"], "mlp32", protocol=protocol, concurrency=4,
                           measurement=perf.Measurement(request_count=100, stability_pct=50, max_trials=5))
    assert result.throughput > 0 and 0 < result.p50_us <= result.p99_us
    assert result.requests_source == "server-stats" and result.requests_completed >= 300
    assert result.server_cpu_s > 0 and result.server_cpu_us_per_request > 0
    assert result.client_cpu_s > 0


@needs_perf_analyzer
def test_run_perf_with_batches(peer):
    result = perf.run_perf(peer["target"], "mlp32", protocol="grpc", concurrency=2, batch_size=8,
                           measurement=perf.Measurement(request_count=100, stability_pct=50, max_trials=5))
    assert result.batch_size == 8 and result.requests_per_s == pytest.approx(result.throughput / 8)
    assert result.server_cpu_us_per_row == pytest.approx(result.server_cpu_us_per_request / 8)


def test_locust_headless(peer, tmp_path):
    # not imported here: locust monkey-patches the process with gevent; it runs as its own process
    assert importlib.util.find_spec("locust") is not None, "locust is not installed: run `bash bench/setup.sh --peer`"
    env = dict(os.environ, PARITY_MODEL="mlp32", PARITY_BINARY="1")
    prefix = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"), "--headless", "-u", "4",
         "-r", "4", "-t", "3s", "--host", peer["target"].http_base, "--csv", str(prefix), "--only-summary"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(f"{prefix}_stats.csv") as fh:
        rows = {r["Name"]: r for r in csv.DictReader(fh)}
    assert int(rows["POST infer"]["Request Count"]) > 10
    assert int(rows["POST infer"]["Failure Count"]) == 0


@needs_perf_analyzer
def test_driver_against_the_peer(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "serving.py"), "--quick", "--only", "peer,grpc", "--concurrency", "2",
         "--results-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "[1/1" in proc.stderr and "Triton via PyTriton" in proc.stdout
    (path,) = tmp_path.glob("serving-*.json")
    doc = json.loads(path.read_text())
    (result,) = doc["results"]
    assert result["section"] == "peer" and result["protocol"] == "grpc" and result["concurrency"] == 2
    assert doc["servers"][0]["exit_code"] == 0 and doc["errors"] == []


def test_sigterm_stops_the_peer_cleanly(peer):
    proc = peer["proc"]
    tree = perf.process_tree(proc.pid)
    assert len(tree) >= 2  # tritonserver and the Python backend stub run below the peer
    started = time.monotonic()
    assert stop(proc) == 0
    assert time.monotonic() - started < 30

    def alive():
        return [p for p in tree if os.path.exists(f"/proc/{p}") and perf._read_stat(p) and perf._read_stat(p)[0] != "Z"]

    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive() == [], f"left behind: {alive()}"
    assert "READY" in peer["log"].read_text(errors="replace")
