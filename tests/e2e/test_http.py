"""The HTTP transport over the wire: a real server process (`python -m parity serve`) and
tritonclient.http as the client (JSON and binary tensors), plus plain http.client / sockets for
what tritonclient will not send (malformed JSON, wrong byte lengths, oversized bodies)."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from parity.testing.models import mlp_config, mlp_reference, write_add_model, write_config, write_identity_onnx, write_mlp_onnx
from parity.testing.server import ServerProcess

SIZES = [16, 32, 32, 4]
MAX_BATCH = 8
TOKEN = "s3cret"
MAX_BODY = 1 << 20  # the server's body limit in this module


# -- models ---------------------------------------------------------------------------------------------


def build_repository(root: Path):
    from onnx import TensorProto

    weights = write_mlp_onnx(root / "mlp" / "1" / "model.onnx", SIZES)
    write_config(root / "mlp", mlp_config(SIZES, max_batch_size=MAX_BATCH))
    write_mlp_onnx(root / "spare" / "1" / "model.onnx", SIZES)
    write_config(root / "spare", mlp_config(SIZES, max_batch_size=MAX_BATCH))
    # A lone request waits up to 30 s for a batch of 8 that never fills: its deadline expires first.
    write_mlp_onnx(root / "slow" / "1" / "model.onnx", SIZES)
    write_config(
        root / "slow",
        mlp_config(SIZES, max_batch_size=MAX_BATCH, preferred_batch_size=[MAX_BATCH], max_queue_delay_microseconds=30_000_000),
    )
    write_identity_onnx(root / "strs" / "1" / "model.onnx", TensorProto.STRING, ["n"])
    write_config(
        root / "strs",
        {
            "platform": "onnxruntime_onnx",
            "max_batch_size": 0,
            "inputs": [{"name": "IN", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "OUT", "datatype": "BYTES", "shape": [-1]}],
        },
    )
    write_identity_onnx(root / "ids" / "1" / "model.onnx", TensorProto.INT64, ["batch", "n"])
    write_config(
        root / "ids",
        {
            "platform": "onnxruntime_onnx",
            "max_batch_size": MAX_BATCH,
            "inputs": [{"name": "IN", "datatype": "INT64", "shape": [-1]}],
            "outputs": [{"name": "OUT", "datatype": "INT64", "shape": [-1]}],
            "dynamic_batching": {},
        },
    )
    write_add_model(root, width=4, max_batch_size=MAX_BATCH)
    return weights


# -- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    weights = build_repository(root)
    server = ServerProcess(
        root,
        "--admin-token", TOKEN,
        "--max-body-bytes", str(MAX_BODY),
        "--repository-poll-secs", "3600",
        ready_timeout=90,
    )  # fmt: skip
    try:
        server.start()  # waits for /v2/health/ready, showing the server's output if it never comes
        yield server, weights
    finally:
        rc = server.stop()
        output = server.output()
        Path(server._log.name).unlink(missing_ok=True)
    assert rc == 0, output
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def url(served):
    return served[0].http_url


@pytest.fixture(scope="module")
def weights(served):
    return served[1]


@pytest.fixture(scope="module")
def client(url):
    c = httpclient.InferenceServerClient(url, concurrency=16, connection_timeout=30, network_timeout=30)
    yield c
    c.close()


# -- helpers --------------------------------------------------------------------------------------------


def rows(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, SIZES[0])).astype(np.float32)


def fp32_input(x, name="INPUT0", binary=True):
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def raw_request(url, method, path, body=b"", headers=None, timeout=30):
    """(status, headers, body) of one request sent with http.client."""
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def error_of(status_body):
    status, _, body = status_body
    return status, json.loads(body)["error"]


def binary_infer_body(inputs: list[tuple[str, str, list, bytes]], extra: dict | None = None) -> tuple[bytes, dict]:
    """A binary-extension body from (name, datatype, shape, raw bytes) tuples."""
    doc = {
        "inputs": [
            {"name": n, "datatype": dt, "shape": shape, "parameters": {"binary_data_size": len(raw)}}
            for n, dt, shape, raw in inputs
        ],
        **(extra or {}),
    }
    header = json.dumps(doc).encode()
    return header + b"".join(raw for *_, raw in inputs), {"Inference-Header-Content-Length": str(len(header))}


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -- health, metadata, configuration, statistics, repository ------------------------------------------


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "parity" and meta["version"]
    assert {"binary_tensor_data", "statistics", "model_repository", "model_configuration"} <= set(meta["extensions"])


def test_model_ready(client):
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "7")
    assert not client.is_model_ready("nope")


def test_model_metadata(client):
    meta = client.get_model_metadata("mlp")
    assert meta["name"] == "mlp" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, SIZES[0]]}]
    assert meta["outputs"] == [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, SIZES[-1]]}]
    assert client.get_model_metadata("mlp", "1") == meta
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("mlp", "3")
    assert e.value.status() == "404" and "version 3" in e.value.message()


def test_model_config(client):
    cfg = client.get_model_config("mlp")
    assert cfg["name"] == "mlp" and cfg["max_batch_size"] == MAX_BATCH
    assert cfg["input"] == [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [SIZES[0]]}]
    assert cfg["output"] == [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [SIZES[-1]]}]
    slow = client.get_model_config("slow")["dynamic_batching"]
    assert slow["preferred_batch_size"] == [MAX_BATCH] and slow["max_queue_delay_microseconds"] == 30_000_000
    assert client.get_model_config("strs")["input"][0]["data_type"] == "TYPE_STRING"


def test_statistics(client):
    x = rows(3)
    client.infer("mlp", [fp32_input(x)])
    stats = client.get_inference_statistics("mlp")["model_stats"]
    assert len(stats) == 1 and stats[0]["name"] == "mlp" and stats[0]["version"] == "1"
    s = stats[0]["inference_stats"]
    assert s["success"]["count"] >= 1 and s["success"]["ns"] > 0
    assert stats[0]["inference_count"] >= 3
    everything = client.get_inference_statistics()["model_stats"]
    assert {"mlp", "slow", "strs", "add"} <= {m["name"] for m in everything}
    with pytest.raises(InferenceServerException) as e:
        client.get_inference_statistics("nope")
    assert e.value.status() == "404"


def test_repository_index(client, url):
    index = client.get_model_repository_index()
    by_name = {m["name"]: m for m in index}
    assert {"mlp", "slow", "strs", "ids", "add", "spare"} <= set(by_name)
    assert by_name["mlp"]["state"] == "READY" and by_name["mlp"]["version"] == "1"
    status, _, body = raw_request(url, "POST", "/v2/repository/index", b'{"ready": true}')
    assert status == 200 and all(m["state"] == "READY" for m in json.loads(body))
    status, message = error_of(raw_request(url, "POST", "/v2/repository/index", b'{"ready": "yes"}'))
    assert status == 400 and "ready" in message


def test_repository_load_and_unload_need_the_admin_token(client):
    with pytest.raises(InferenceServerException) as e:
        client.unload_model("spare")
    assert e.value.status() == "401" and "token" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.unload_model("spare", headers={"Authorization": "Bearer wrong"})
    assert e.value.status() == "403"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    client.unload_model("spare", headers=auth)
    assert not client.is_model_ready("spare")
    client.load_model("spare", headers=auth)
    assert client.is_model_ready("spare")
    assert client.is_server_ready()


# -- inference ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_infer_matches_reference(client, weights, binary_in, binary_out):
    x = rows(5, seed=int(binary_in) * 2 + int(binary_out))
    result = client.infer(
        "mlp",
        [fp32_input(x, binary=binary_in)],
        outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_out)],
        request_id="r-1",
    )
    assert result.get_response()["id"] == "r-1"
    assert result.get_response()["model_version"] == "1"
    out = result.as_numpy("OUTPUT0")
    assert out.shape == (5, SIZES[-1]) and out.dtype == np.float32
    np.testing.assert_allclose(out, mlp_reference(x, weights), rtol=1e-5, atol=1e-5)


def test_infer_without_requested_outputs_gets_binary_outputs(client, weights):
    x = rows(2, seed=9)
    result = client.infer("mlp", [fp32_input(x, binary=False)], model_version="1")
    assert "binary_data_size" in result.get_output("OUTPUT0")["parameters"]
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), mlp_reference(x, weights), rtol=1e-5, atol=1e-5)


def test_infer_two_inputs_and_int64_variable_dimension(client):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), np.float32)
    result = client.infer("add", [fp32_input(a, "A"), fp32_input(b, "B", binary=False)])
    np.testing.assert_array_equal(result.as_numpy("SUM"), a + b)
    ids = np.arange(15, dtype=np.int64).reshape(3, 5) - 7
    inp = httpclient.InferInput("IN", [3, 5], "INT64")
    inp.set_data_from_numpy(ids, binary_data=False)
    result = client.infer("ids", [inp], outputs=[httpclient.InferRequestedOutput("OUT", binary_data=False)])
    np.testing.assert_array_equal(result.as_numpy("OUT"), ids)


@pytest.mark.parametrize("binary", [True, False])
def test_infer_bytes(client, binary):
    words = np.array([b"alpha", b"", "gr\u00fc\u00df".encode(), b"x" * 300], dtype=object)
    inp = httpclient.InferInput("IN", [4], "BYTES")
    inp.set_data_from_numpy(words, binary_data=binary)
    result = client.infer("strs", [inp], outputs=[httpclient.InferRequestedOutput("OUT", binary_data=binary)])
    out = list(result.as_numpy("OUT"))
    # JSON carries BYTES as strings, and tritonclient hands them back as str
    assert out == (list(words) if binary else [w.decode() for w in words])


def test_hundreds_of_concurrent_requests_of_mixed_batch_sizes(client, weights):
    xs = [rows(1 + i % MAX_BATCH, seed=100 + i) for i in range(300)]
    pending = []
    for i, x in enumerate(xs):
        outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=bool(i % 3))]
        pending.append(client.async_infer("mlp", [fp32_input(x, binary=bool(i % 2))], outputs=outputs, request_id=str(i)))
    for i, (x, req) in enumerate(zip(xs, pending)):
        result = req.get_result(timeout=60)
        assert result.get_response()["id"] == str(i)
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), mlp_reference(x, weights), rtol=1e-5, atol=1e-5)


def test_compressed_requests_and_responses(client, weights):
    x = rows(8, seed=4)
    for algorithm, binary in (("gzip", False), ("deflate", False), ("gzip", True)):
        result = client.infer(
            "mlp",
            [fp32_input(x)],
            outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)],
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), mlp_reference(x, weights), rtol=1e-5, atol=1e-5)
    # A response large enough to be compressed, with binary and JSON outputs.
    ids = np.arange(8 * 300, dtype=np.int64).reshape(8, 300)
    for binary in (True, False):
        inp = httpclient.InferInput("IN", list(ids.shape), "INT64")
        inp.set_data_from_numpy(ids)
        result = client.infer(
            "ids",
            [inp],
            outputs=[httpclient.InferRequestedOutput("OUT", binary_data=binary)],
            request_compression_algorithm="gzip",
            response_compression_algorithm="deflate" if binary else "gzip",
        )
        np.testing.assert_array_equal(result.as_numpy("OUT"), ids)


def test_timeout_expiring_while_queued_is_504(client):
    t0 = time.monotonic()
    with pytest.raises(InferenceServerException) as e:
        client.infer("slow", [fp32_input(rows(1))], timeout=200_000)  # microseconds
    assert e.value.status() == "504"
    assert "deadline" in e.value.message()
    assert time.monotonic() - t0 < 10


# -- bad input: 400 (404 for unknown models and versions), a message that says what to fix ------------


def test_unknown_model_and_version(client):
    with pytest.raises(InferenceServerException) as e:
        client.infer("nope", [fp32_input(rows(1))])
    assert e.value.status() == "404" and "unknown model 'nope'" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [fp32_input(rows(1))], model_version="9")
    assert e.value.status() == "404" and "version 9" in e.value.message()


def test_missing_and_extra_inputs(client):
    a = np.ones((1, 4), np.float32)
    with pytest.raises(InferenceServerException) as e:
        client.infer("add", [fp32_input(a, "A")])
    assert e.value.status() == "400" and "'B'" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer("add", [fp32_input(a, "A"), fp32_input(a, "B"), fp32_input(a, "C")])
    assert e.value.status() == "400" and "no input 'C'" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [fp32_input(rows(1))], outputs=[httpclient.InferRequestedOutput("NOPE")])
    assert e.value.status() == "400" and "no output 'NOPE'" in e.value.message()


def test_wrong_datatype_shape_and_batch(client):
    inp = httpclient.InferInput("INPUT0", [1, SIZES[0]], "FP64")
    inp.set_data_from_numpy(rows(1).astype(np.float64))
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [inp])
    assert e.value.status() == "400" and "FP64" in e.value.message() and "FP32" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [fp32_input(np.ones((2, SIZES[0] - 1), np.float32))])
    assert e.value.status() == "400" and "shape" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [fp32_input(rows(MAX_BATCH + 1))])
    assert e.value.status() == "400" and "max_batch_size" in e.value.message()


def test_json_data_of_the_wrong_count_or_kind(url):
    doc = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, SIZES[0]], "data": [1.0] * (SIZES[0] - 1)}]}
    status, message = error_of(raw_request(url, "POST", "/v2/models/mlp/infer", json.dumps(doc).encode()))
    assert status == 400 and "elements" in message
    doc["inputs"][0]["data"] = ["a"] * SIZES[0]
    status, message = error_of(raw_request(url, "POST", "/v2/models/mlp/infer", json.dumps(doc).encode()))
    assert status == 400 and "FP32" in message
    doc["inputs"][0]["data"] = [1.0] * SIZES[0]
    doc["inputs"][0]["shape"] = "1x16"
    status, message = error_of(raw_request(url, "POST", "/v2/models/mlp/infer", json.dumps(doc).encode()))
    assert status == 400 and "shape" in message


def test_raw_binary_content_of_the_wrong_length(url):
    raw = rows(1).tobytes()[:-4]
    body, headers = binary_infer_body([("INPUT0", "FP32", [1, SIZES[0]], raw)])
    status, message = error_of(raw_request(url, "POST", "/v2/models/mlp/infer", body, headers))
    assert status == 400 and f"{len(raw)} bytes" in message and f"{SIZES[0] * 4} bytes" in message
    # The declared size runs past the end of the body.
    body, headers = binary_infer_body([("INPUT0", "FP32", [1, SIZES[0]], rows(1).tobytes())])
    status, message = error_of(raw_request(url, "POST", "/v2/models/mlp/infer", body[:-8], headers))
    assert status == 400 and "binary_data_size" in message
    # Bytes left over after the declared inputs.
    status, message = error_of(raw_request(url, "POST", "/v2/models/mlp/infer", body + b"\0" * 8, headers))
    assert status == 400 and "beyond" in message
    # A header length longer than the body.
    headers = {"Inference-Header-Content-Length": str(len(body) + 1)}
    status, message = error_of(raw_request(url, "POST", "/v2/models/mlp/infer", body, headers))
    assert status == 400 and "Inference-Header-Content-Length" in message


def test_bytes_tensor_with_a_truncated_length_prefix(url):
    raw = struct.pack("<I", 3) + b"abc" + b"\x05\x00"  # the second element's prefix is cut short
    body, headers = binary_infer_body([("IN", "BYTES", [2], raw)])
    status, message = error_of(raw_request(url, "POST", "/v2/models/strs/infer", body, headers))
    assert status == 400 and "truncated" in message


def test_malformed_json_and_bad_parameters(url):
    cases = [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"", "empty"),
        (b'{"inputs": {}}', "'inputs' must be an array"),
        (b'{"inputs": [{"name": "INPUT0"}]}', "datatype"),
        (b'{"id": 5, "inputs": []}', "'id'"),
        (b'{"parameters": {"timeout": "soon"}, "inputs": []}', "timeout"),
        (b'{"parameters": {"timeout": -1}, "inputs": []}', "timeout"),
        (b'{"parameters": {"binary_data_output": "yes"}, "inputs": []}', "binary_data_output"),
        (b'{"parameters": {"custom": [1, 2]}, "inputs": []}', "custom"),
        (b'{"parameters": [], "inputs": []}', "'parameters' must be a JSON object"),
        (b'{"inputs": [], "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": 1}}]}', "binary_data"),
        (b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16]}]}', "no 'data'"),
        (b'{"inputs": [{"name": "INPUT0", "datatype": "FLOAT", "shape": [1], "data": [1]}]}', "unknown datatype"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
        (b"\xff\xfe{}", "JSON"),
    ]
    for body, fragment in cases:
        status, message = error_of(raw_request(url, "POST", "/v2/models/mlp/infer", body))
        assert status == 400, (body[:60], message)
        assert fragment in message, (body[:60], message)


def test_a_body_over_the_limit(url, client):
    # tritonclient sends the whole body; the server answers 400 and closes.
    big = np.zeros((MAX_BATCH, MAX_BODY // (4 * MAX_BATCH) + 16), np.float32)
    status, message = error_of(
        raw_request(url, "POST", "/v2/models/mlp/infer", *binary_infer_body([("INPUT0", "FP32", list(big.shape), big.tobytes())]))
    )
    assert status == 400 and str(MAX_BODY) in message and "--max-body-bytes" in message
    # With Expect: 100-continue the server refuses before the body is sent.
    host, port = url.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (65 << 20)
        )
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 400 "), reply
        assert b"connection: close" in reply.lower()
    assert client.is_server_ready()


def test_the_server_still_serves_after_bad_input(client, weights):
    x = rows(4, seed=42)
    np.testing.assert_allclose(
        client.infer("mlp", [fp32_input(x)]).as_numpy("OUTPUT0"), mlp_reference(x, weights), rtol=1e-5, atol=1e-5
    )


def test_metrics(url):
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    lines = [ln for ln in text.splitlines() if ln.startswith('parity_request_success_total{model="mlp",version="1"}')]
    assert lines and float(lines[0].split()[-1]) > 0
    assert 'parity_request_failure_total{model="mlp",version="1",reason="bad_input"}' in text
    assert 'parity_request_failure_total{model="slow",version="1",reason="timeout"}' in text


def test_loading_a_model_not_in_the_repository_is_404_and_the_server_stays_ready(client):
    with pytest.raises(InferenceServerException) as e:
        client.load_model("not-there", headers={"Authorization": f"Bearer {TOKEN}"})
    assert e.value.status() == "404"
    assert client.is_server_ready()
