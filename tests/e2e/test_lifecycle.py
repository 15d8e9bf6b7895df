"""The server as a process: graceful shutdown, version swaps under load over the wire, workers."""

import threading
import time
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from parity.testing.models import mlp_config, mlp_reference, write_config, write_mlp_onnx
from parity.testing.server import ServerProcess

SIZES = [8, 16, 2]


def infer_http(client, model, x):
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return client.infer(model, [inp])


def test_sigterm_finishes_accepted_requests_then_exits_zero(tmp_path):
    write_mlp_onnx(tmp_path / "m" / "1" / "model.onnx", SIZES)
    # requests wait up to 1 s for a batch of 8 that never fills: they are queued when SIGTERM comes
    write_config(tmp_path / "m", mlp_config(SIZES, max_batch_size=8, preferred_batch_size=[8], max_queue_delay_microseconds=1_000_000))
    server = ServerProcess(tmp_path).start()
    try:
        x = np.ones((1, 8), np.float32)
        results, errors = [], []

        def call():
            client = httpclient.InferenceServerClient(server.http_url, connection_timeout=30, network_timeout=30)
            try:
                results.append(infer_http(client, "m", x).as_numpy("OUTPUT0"))
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until all three are queued
            with urllib.request.urlopen(f"http://{server.http_url}/metrics") as r:
                if 'parity_pending_requests{model="m",version="1"} 3' in r.read().decode():
                    break
            time.sleep(0.02)
        rc = server.stop()
        for t in threads:
            t.join(10)
        assert errors == [] and len(results) == 3
        assert rc == 0, server.output()
        assert "draining" in server.output()
    finally:
        server.stop()


def test_versions_swap_under_load_with_zero_failed_requests(tmp_path):
    weights = {1: write_mlp_onnx(tmp_path / "m" / "1" / "model.onnx", SIZES, seed=1)}
    write_config(tmp_path / "m", mlp_config(SIZES))
    with ServerProcess(tmp_path, "--repository-poll-secs", "0.2") as server:
        stop = threading.Event()
        answers, failures = [], []
        x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)

        def load():
            client = grpcclient.InferenceServerClient(server.grpc_url)
            inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            while not stop.is_set():
                try:
                    r = client.infer("m", [inp])
                    answers.append((r.get_response().model_version, r.as_numpy("OUTPUT0")))
                except Exception as e:
                    failures.append(e)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        client = httpclient.InferenceServerClient(server.http_url)
        for v in range(2, 5):
            weights[v] = write_mlp_onnx(tmp_path / "m" / str(v) / "model.onnx", SIZES, seed=v)
            deadline = time.monotonic() + 30
            while client.get_model_metadata("m")["versions"] != [str(v)]:
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.05)
            while not any(ver == str(v) for ver, _ in answers[-50:]):  # the load reaches the new version
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join()
        assert failures == []
        versions = {v for v, _ in answers}
        assert {"1", "4"} <= versions
        for v, out in answers:
            np.testing.assert_allclose(out, mlp_reference(x, weights[int(v)]), rtol=1e-5, atol=1e-5)


def test_two_workers_share_the_ports_and_the_metrics(tmp_path):
    write_mlp_onnx(tmp_path / "m" / "1" / "model.onnx", SIZES)
    write_config(tmp_path / "m", mlp_config(SIZES))
    with ServerProcess(tmp_path, "--workers", "2") as server:
        x = np.ones((2, 8), np.float32)
        pids = set()
        for _ in range(40):  # new connections are spread over both workers by the kernel
            client = httpclient.InferenceServerClient(server.http_url)
            infer_http(client, "m", x)
            client.close()
        deadline = time.monotonic() + 10
        while True:
            time.sleep(0.1)  # workers publish their samples every second: poll until they have
            with urllib.request.urlopen(f"http://{server.http_url}/metrics") as r:
                text = r.read().decode()
            line = next(l for l in text.splitlines() if l.startswith('parity_request_success_total{model="m"'))
            if line.endswith(" 40") or time.monotonic() > deadline:
                break
        assert line.endswith(" 40"), text
        client = httpclient.InferenceServerClient(server.http_url)
        while True:  # whichever worker answers sums the other's last published statistics
            stats = client.get_inference_statistics("m")["model_stats"][0]
            if stats["inference_count"] == 80 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert stats["inference_count"] == 80  # 40 requests of 2 rows, summed over both workers
        for line in server.output().splitlines():
            if "serving 1 model" in line:
                pids.add(line.split("[")[1].split("]")[0])
        assert len(pids) == 2
    assert server.returncode == 0
