"""The gRPC transport over the wire: a real server process, tritonclient (sync and asyncio) as the
client, and a plain grpcio stub built from our generated classes for what tritonclient will not
send (malformed raw contents, typed contents)."""

from __future__ import annotations

import asyncio
import queue
import signal
import time
import urllib.request
from contextlib import closing

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
from tritonclient.utils import InferenceServerException

from parity._proto.inference import grpc_service_pb2 as pb
from parity._proto.inference import grpc_service_pb2_grpc as pb_grpc
from parity.testing.models import mlp_config, mlp_reference, write_add_model, write_config, write_identity_onnx, write_mlp_onnx
from parity.testing.server import ServerProcess

SIZES = [16, 32, 32, 4]
MAX_BATCH = 8
TOKEN = "s3cret"
MAX_BODY = 1 << 20  # the server's message limit in this module


# -- models ---------------------------------------------------------------------------------------------


def build_repository(root):
    from onnx import TensorProto

    weights = write_mlp_onnx(root / "mlp" / "1" / "model.onnx", SIZES)
    write_config(root / "mlp", mlp_config(SIZES, max_batch_size=MAX_BATCH))
    for name in ("statm", "spare"):  # statm: only the statistics test uses it
        write_mlp_onnx(root / name / "1" / "model.onnx", SIZES)
        write_config(root / name, mlp_config(SIZES, max_batch_size=MAX_BATCH))
    # Queued requests wait up to 30 s for a batch of 8 that never fills: deadlines expire first.
    write_mlp_onnx(root / "slow" / "1" / "model.onnx", SIZES)
    write_config(
        root / "slow",
        mlp_config(SIZES, max_batch_size=MAX_BATCH, preferred_batch_size=[MAX_BATCH], max_queue_delay_microseconds=30_000_000),
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
    write_add_model(root, width=4, max_batch_size=MAX_BATCH)
    return weights


# -- fixtures -------------------------------------------------------------------------------------------


def wait_grpc_ready(server: ServerProcess, timeout: float = 60.0) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    deadline = time.monotonic() + timeout
    last = None
    try:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(f"server exited with {server.proc.returncode} before it was ready:\n{server.output()}")
            try:
                if client.is_server_ready(client_timeout=1):
                    return
            except InferenceServerException as e:
                last = e
            time.sleep(0.05)
    finally:
        client.close()
    server.stop()
    raise RuntimeError(f"gRPC ServerReady not true after {timeout}s (last error: {last}):\n{server.output()}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    weights = build_repository(root)
    args = ("--admin-token", TOKEN, "--max-body-bytes", str(MAX_BODY), "--repository-poll-secs", "3600")
    with ServerProcess(root, *args, wait_ready=False) as server:
        wait_grpc_ready(server)
        yield server, weights
        rc = server.stop()
        output = server.output()
    assert rc == 0, output
    assert "Traceback" not in output and "unexpected error" not in output, output


@pytest.fixture(scope="module")
def url(served):
    return served[0].grpc_url


@pytest.fixture(scope="module")
def weights(served):
    return served[1]


@pytest.fixture(scope="module")
def client(url):
    c = grpcclient.InferenceServerClient(url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(url):
    channel = grpc.insecure_channel(url)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


# -- helpers --------------------------------------------------------------------------------------------


def fp32_input(x, name="INPUT0"):
    inp = grpcclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def rows(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, SIZES[0])).astype(np.float32)


def raw_request(model, inputs, raw, **kw):
    """A ModelInferRequest with raw contents, built by hand: inputs as (name, datatype, shape)."""
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name=n, datatype=d, shape=s) for n, d, s in inputs],
        raw_input_contents=raw,
        **kw,
    )


def expect_error(fn, code: str, *fragments: str) -> str:
    """Call fn; it must fail with the gRPC status `code` and a message containing `fragments`."""
    with pytest.raises((InferenceServerException, grpc.RpcError)) as info:
        fn()
    e = info.value
    if isinstance(e, InferenceServerException):
        status, message = e.status(), e.message()
    else:
        status, message = str(e.code()), e.details()
    assert status == f"StatusCode.{code}", (status, message)
    for f in fragments:
        assert f in message, message
    return message


def stats_of(client, model):
    return client.get_inference_statistics(model, as_json=True)["model_stats"][0]


def count(stats, key):
    return int(stats["inference_stats"][key].get("count", 0))


def failures(served, model, reason) -> int:
    """parity_request_failure_total for one reason, read from the server's /metrics."""
    want = f'parity_request_failure_total{{model="{model}",version="1",reason="{reason}"}} '
    with urllib.request.urlopen(f"http://{served[0].http_url}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(want):
                return int(float(line[len(want) :]))
    raise AssertionError(f"no {want!r} in /metrics")


def pending(url, model) -> int:
    """parity_pending_requests of a model: requests queued and not yet executed."""
    want = f'parity_pending_requests{{model="{model}",version="1"}} '
    with urllib.request.urlopen(f"http://{url}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(want):
                return int(float(line[len(want) :]))
    return 0


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


# -- the hand-written response encoding -------------------------------------------------------------------------


def test_response_encoding_matches_protobuf():
    """The transport writes ModelInferResponse bytes by hand; they must parse as protobuf builds them."""
    from parity.serving.transport.grpc_service import Wire as _Wire, stream_error as _stream_error, stream_ok as _stream_ok
    from parity.types import Tensor

    rng = np.random.default_rng(1)
    big = rng.standard_normal((200, 3)).astype(np.float32)
    cases = [
        ("m", "1", "", [Tensor("OUT", "FP32", (2, 4), np.arange(8, dtype=np.float32).reshape(2, 4))]),
        ("model.with-long_name" * 5, "12", "id-" + "x" * 200, [Tensor("A", "INT64", (300,), np.arange(300, dtype=np.int64))]),
        ("m", "1", "r", [Tensor("S", "FP64", (), np.array(2.5))]),
        ("m", "1", "r", [Tensor("T", "FP32", (3, 200), big.T)]),  # not C-contiguous
        ("m", "1", "r", [Tensor("E", "INT32", (4,), np.arange(4, dtype=">i4"))]),  # big-endian
        ("m", "1", "r", [Tensor("B", "BYTES", (3,), np.array([b"a", b"", "ü".encode()], dtype=object)),
                         Tensor("Z", "BOOL", (1, 0), np.zeros((1, 0), bool)),
                         Tensor("H", "FP16", (70000,), np.ones(70000, np.float16))]),
    ]  # fmt: skip
    wire = _Wire()
    for model, version, rid, outputs in cases:
        expected = pb.ModelInferResponse(model_name=model, model_version=version, id=rid)
        for t in outputs:
            expected.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.data.shape))
            if t.datatype == "BYTES":
                expected.raw_output_contents.append(b"".join(len(v).to_bytes(4, "little") + v for v in t.data.ravel()))
            else:
                expected.raw_output_contents.append(t.data.astype(t.data.dtype.newbyteorder("<")).tobytes())
        got = wire.infer_response(model, version, rid, outputs)
        assert pb.ModelInferResponse.FromString(got) == expected
        assert got == expected.SerializeToString()
        assert pb.ModelStreamInferResponse.FromString(_stream_ok(got)).infer_response == expected
    err = pb.ModelStreamInferResponse.FromString(_stream_error("bad " * 100, "m", "7"))
    assert err.error_message == "bad " * 100 and err.infer_response.model_name == "m" and err.infer_response.id == "7"


# -- server and model information -------------------------------------------------------------------------


def test_server_live_ready_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    md = client.get_server_metadata(as_json=True)
    assert md["name"] == "parity" and md["version"]
    assert {"statistics", "model_configuration", "model_repository"} <= set(md["extensions"])


def test_model_ready(client):
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "2")
    assert not client.is_model_ready("nope")


def test_model_metadata(client):
    md = client.get_model_metadata("mlp", as_json=True)
    assert md["name"] == "mlp" and md["versions"] == ["1"] and md["platform"] == "onnxruntime_onnx"
    assert md["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": ["-1", str(SIZES[0])]}]
    assert md["outputs"] == [{"name": "OUTPUT0", "datatype": "FP32", "shape": ["-1", str(SIZES[-1])]}]
    md = client.get_model_metadata("strs", as_json=True)
    assert md["inputs"] == [{"name": "IN", "datatype": "BYTES", "shape": ["-1"]}]
    expect_error(lambda: client.get_model_metadata("nope"), "NOT_FOUND", "unknown model 'nope'")


def test_model_config(client):
    cfg = client.get_model_config("mlp", as_json=True)["config"]
    assert cfg["name"] == "mlp" and cfg["platform"] == "onnxruntime_onnx"
    assert int(cfg["max_batch_size"]) == MAX_BATCH
    assert "dynamic_batching" in cfg
    assert cfg["input"] == [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [str(SIZES[0])]}]
    assert cfg["output"] == [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [str(SIZES[-1])]}]
    assert client.get_model_config("mlp", "1", as_json=True)["config"] == cfg  # answered from the cache
    slow = client.get_model_config("slow", as_json=True)["config"]["dynamic_batching"]
    assert slow["preferred_batch_size"] == [MAX_BATCH] and int(slow["max_queue_delay_microseconds"]) == 30_000_000
    strs = client.get_model_config("strs", as_json=True)["config"]
    assert "max_batch_size" not in strs and "dynamic_batching" not in strs  # 0 / absent
    assert strs["input"][0]["data_type"] == "TYPE_STRING" and strs["input"][0]["dims"] == ["-1"]
    expect_error(lambda: client.get_model_config("mlp", "3"), "NOT_FOUND", "version 3")


def test_repository_index(client):
    index = client.get_model_repository_index(as_json=True)["models"]
    names = {m["name"] for m in index}
    assert {"mlp", "slow", "ids", "strs", "add", "statm", "spare"} <= names
    mlp = next(m for m in index if m["name"] == "mlp")
    assert mlp["version"] == "1" and mlp["state"] == "READY"


# -- inference ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, MAX_BATCH])
def test_infer_matches_reference(client, weights, n):
    x = rows(n, seed=n)
    result = client.infer("mlp", [fp32_input(x)], request_id=f"req-{n}")
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), mlp_reference(x, weights), rtol=1e-5, atol=1e-5)
    resp = result.get_response()
    assert (resp.model_name, resp.model_version, resp.id) == ("mlp", "1", f"req-{n}")
    assert list(resp.outputs[0].shape) == [n, SIZES[-1]] and resp.outputs[0].datatype == "FP32"


def test_infer_requested_output_and_version(client, weights):
    x = rows(2)
    result = client.infer("mlp", [fp32_input(x)], model_version="1", outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), mlp_reference(x, weights), rtol=1e-5, atol=1e-5)


def test_infer_two_inputs(client):
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 0.5, np.float32)
    result = client.infer("add", [fp32_input(a, "A"), fp32_input(b, "B")])
    np.testing.assert_array_equal(result.as_numpy("SUM"), a + b)


def test_infer_int64_variable_dimension(client):
    for width in (1, 5, 300):
        x = np.arange(2 * width, dtype=np.int64).reshape(2, width) - 7
        inp = grpcclient.InferInput("IN", list(x.shape), "INT64")
        inp.set_data_from_numpy(x)
        out = client.infer("ids", [inp]).as_numpy("OUT")
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, x)


def test_infer_bytes(client):
    x = np.array([b"hello", b"", "grüße".encode(), b"x" * 300], dtype=object)
    inp = grpcclient.InferInput("IN", list(x.shape), "BYTES")
    inp.set_data_from_numpy(x)
    result = client.infer("strs", [inp])
    assert result.get_response().outputs[0].datatype == "BYTES"
    assert result.as_numpy("OUT").tolist() == x.tolist()


def test_typed_contents(stub, weights):
    """Inputs in the typed contents fields instead of raw_input_contents."""
    x = rows(2, seed=5)
    T = pb.ModelInferRequest.InferInputTensor
    req = pb.ModelInferRequest(
        model_name="mlp",
        inputs=[T(name="INPUT0", datatype="FP32", shape=[2, SIZES[0]], contents=pb.InferTensorContents(fp32_contents=x.ravel()))],
    )
    resp = stub.ModelInfer(req)
    out = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(list(resp.outputs[0].shape))
    np.testing.assert_allclose(out, mlp_reference(x, weights), rtol=1e-5, atol=1e-5)

    ids = [-(2**40), 0, 3, 2**40]
    req = pb.ModelInferRequest(
        model_name="ids",
        inputs=[T(name="IN", datatype="INT64", shape=[1, 4], contents=pb.InferTensorContents(int64_contents=ids))],
    )
    resp = stub.ModelInfer(req)
    assert np.frombuffer(resp.raw_output_contents[0], "<i8").tolist() == ids

    req = pb.ModelInferRequest(
        model_name="strs",
        inputs=[T(name="IN", datatype="BYTES", shape=[2], contents=pb.InferTensorContents(bytes_contents=[b"ab", b"c"]))],
    )
    resp = stub.ModelInfer(req)
    assert resp.raw_output_contents[0] == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"

    bad = pb.ModelInferRequest(
        model_name="mlp",
        inputs=[T(name="INPUT0", datatype="FP32", shape=[2, SIZES[0]], contents=pb.InferTensorContents(fp32_contents=[1.0] * 5))],
    )
    expect_error(lambda: stub.ModelInfer(bad), "INVALID_ARGUMENT", "fp32_contents has 5 elements", "needs 32")


def test_stream_infer_with_an_error_in_the_middle(url, weights):
    client = grpcclient.InferenceServerClient(url)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        xs = {}
        for i in range(6):
            if i == 3:  # wrong shape: answered with an error, the stream goes on
                bad = np.ones((1, SIZES[0] + 1), np.float32)
                client.async_stream_infer("mlp", [fp32_input(bad)], request_id="bad")
                continue
            xs[str(i)] = rows(i + 1, seed=10 + i)
            client.async_stream_infer("mlp", [fp32_input(xs[str(i)])], request_id=str(i))
        client.async_stream_infer("nope", [fp32_input(rows(1))], request_id="unknown")
        got, errors = {}, []
        for _ in range(7):
            result, error = results.get(timeout=30)
            if error is not None:
                errors.append(error)
            else:
                got[result.get_response().id] = result.as_numpy("OUTPUT0")
    finally:
        client.stop_stream()
        client.close()
    assert sorted(got) == sorted(xs)
    for rid, x in xs.items():
        np.testing.assert_allclose(got[rid], mlp_reference(x, weights), rtol=1e-5, atol=1e-5)
    messages = sorted(e.message() for e in errors)
    assert len(messages) == 2
    assert "has shape [1, 17]" in messages[0] or "has shape [1, 17]" in messages[1], messages
    assert any("unknown model 'nope'" in m for m in messages), messages


def test_cancelled_stream_drops_its_queued_requests(served, url, client):
    cancels = failures(served, "slow", "cancelled")
    stream_client = grpcclient.InferenceServerClient(url)
    results: queue.Queue = queue.Queue()
    stream_client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(2):
            stream_client.async_stream_infer("slow", [fp32_input(rows(1))], request_id=str(i))
        # both queued, waiting for a batch of 8 that never fills
        assert wait_for(lambda: pending(served[0].http_url, "slow") == 2)
        assert results.empty()
    finally:
        stream_client.stop_stream(cancel_requests=True)
        stream_client.close()
    assert wait_for(lambda: failures(served, "slow", "cancelled") == cancels + 2)
    assert int(stats_of(client, "slow").get("execution_count", 0)) == 0


def test_hundreds_of_concurrent_requests_of_mixed_batch_sizes(url, weights):
    rng = np.random.default_rng(42)
    sizes = rng.integers(1, MAX_BATCH + 1, size=400)
    xs = [rng.standard_normal((int(n), SIZES[0])).astype(np.float32) for n in sizes]

    async def run():
        client = aiogrpcclient.InferenceServerClient(url)
        try:

            async def one(i, x):
                inp = aiogrpcclient.InferInput("INPUT0", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                result = await client.infer("mlp", [inp], request_id=str(i))
                return result.get_response().id, result.as_numpy("OUTPUT0")

            return await asyncio.gather(*(one(i, x) for i, x in enumerate(xs)))
        finally:
            await client.close()

    answers = asyncio.run(run())
    assert len(answers) == len(xs)
    for i, (rid, out) in enumerate(answers):
        assert rid == str(i)
        np.testing.assert_allclose(out, mlp_reference(xs[i], weights), rtol=1e-5, atol=1e-5)


# -- bad requests ---------------------------------------------------------------------------------------------


def _tc_infer(client, model, inputs, **kw):
    return lambda: client.infer(model, inputs, **kw)


def test_bad_requests_are_refused_with_a_helpful_message(client, stub, weights):
    x = rows(2)
    ok = fp32_input(x)
    # tritonclient can build these
    expect_error(_tc_infer(client, "nope", [ok]), "NOT_FOUND", "unknown model 'nope'")
    expect_error(_tc_infer(client, "mlp", [ok], model_version="9"), "NOT_FOUND", "no ready version 9")
    only_a = [fp32_input(np.ones((1, 4), np.float32), "A")]
    expect_error(_tc_infer(client, "add", only_a), "INVALID_ARGUMENT", "needs input(s) ['B']")
    expect_error(
        _tc_infer(client, "mlp", [ok, fp32_input(x, "EXTRA")]), "INVALID_ARGUMENT", "no input 'EXTRA'", "INPUT0"
    )
    f64 = grpcclient.InferInput("INPUT0", list(x.shape), "FP64")
    f64.set_data_from_numpy(x.astype(np.float64))
    expect_error(_tc_infer(client, "mlp", [f64]), "INVALID_ARGUMENT", "datatype FP64", "expects FP32")
    expect_error(
        _tc_infer(client, "mlp", [fp32_input(np.ones((2, 5), np.float32))]), "INVALID_ARGUMENT", "shape [2, 5]", "[-1, 16]"
    )
    expect_error(
        _tc_infer(client, "mlp", [fp32_input(rows(MAX_BATCH + 1))]),
        "INVALID_ARGUMENT",
        f"batch size {MAX_BATCH + 1}",
        "max_batch_size",
    )
    expect_error(
        _tc_infer(client, "mlp", [ok], outputs=[grpcclient.InferRequestedOutput("NOPE")]), "INVALID_ARGUMENT", "no output 'NOPE'"
    )
    expect_error(_tc_infer(client, "mlp", [ok], timeout=-5), "INVALID_ARGUMENT", "timeout")
    # what tritonclient refuses to build: raw bytes through a plain stub
    spec = [("INPUT0", "FP32", [1, SIZES[0]])]
    expect_error(
        lambda: stub.ModelInfer(raw_request("mlp", spec, [b"\0" * 60])),
        "INVALID_ARGUMENT",
        "raw content is 60 bytes",
        "needs 64 bytes",
    )
    expect_error(
        lambda: stub.ModelInfer(raw_request("mlp", spec, [b"\0" * 64, b"\0" * 64])),
        "INVALID_ARGUMENT",
        "1 input(s) but 2 raw_input_contents",
    )
    expect_error(
        lambda: stub.ModelInfer(raw_request("mlp", [("INPUT0", "FP32", [-1, SIZES[0]])], [b"\0" * 64])),
        "INVALID_ARGUMENT",
        "negative dimension",
    )
    expect_error(
        lambda: stub.ModelInfer(raw_request("mlp", [("INPUT0", "FP32", [1] * 40)], [b"\0" * 4])),
        "INVALID_ARGUMENT",
        "40 dimensions",
    )
    expect_error(
        lambda: stub.ModelInfer(raw_request("mlp", [("INPUT0", "FP8", [1, SIZES[0]])], [b"\0" * 16])),
        "INVALID_ARGUMENT",
        "unknown datatype 'FP8'",
    )
    expect_error(
        lambda: stub.ModelInfer(raw_request("strs", [("IN", "BYTES", [2])], [b"\x02\x00\x00\x00ab\x05\x00"])),
        "INVALID_ARGUMENT",
        "truncated",
        "element 1 of 2",
    )
    expect_error(
        lambda: stub.ModelInfer(raw_request("strs", [("IN", "BYTES", [1])], [b"\x09\x00\x00\x00ab"])),
        "INVALID_ARGUMENT",
        "declares 9 bytes",
    )
    both = raw_request("mlp", spec, [b"\0" * 64])
    both.inputs[0].contents.fp32_contents.extend([0.0] * SIZES[0])
    expect_error(lambda: stub.ModelInfer(both), "INVALID_ARGUMENT", "not both")
    # and the server still serves
    np.testing.assert_allclose(client.infer("mlp", [ok]).as_numpy("OUTPUT0"), mlp_reference(x, weights), rtol=1e-5, atol=1e-5)


def test_message_over_the_limit_is_resource_exhausted(client):
    x = np.zeros((1, MAX_BODY // 8 + 10), np.int64)
    inp = grpcclient.InferInput("IN", list(x.shape), "INT64")
    inp.set_data_from_numpy(x)
    expect_error(_tc_infer(client, "ids", [inp]), "RESOURCE_EXHAUSTED")
    assert client.is_server_ready()


# -- deadlines and cancellation ------------------------------------------------------------------------------


def test_grpc_deadline_expiring_while_queued(served, client):
    before, timeouts = stats_of(client, "slow"), failures(served, "slow", "timeout")
    t = time.monotonic()
    expect_error(_tc_infer(client, "slow", [fp32_input(rows(1))], client_timeout=0.3), "DEADLINE_EXCEEDED")
    assert time.monotonic() - t < 5
    assert wait_for(lambda: failures(served, "slow", "timeout") == timeouts + 1)
    after = stats_of(client, "slow")
    assert count(after, "fail") == count(before, "fail") + 1
    assert int(after.get("execution_count", 0)) == 0 and count(after, "success") == 0


def test_timeout_parameter_expiring_while_queued(served, client):
    before, timeouts = stats_of(client, "slow"), failures(served, "slow", "timeout")
    t = time.monotonic()
    message = expect_error(_tc_infer(client, "slow", [fp32_input(rows(1))], timeout=200_000), "DEADLINE_EXCEEDED", "not executed")
    assert time.monotonic() - t < 5, message
    after = stats_of(client, "slow")
    assert count(after, "fail") == count(before, "fail") + 1
    assert failures(served, "slow", "timeout") == timeouts + 1
    assert int(after.get("execution_count", 0)) == 0


def test_client_cancel_drops_the_queued_request(served, url, client):
    before, cancels = stats_of(client, "slow"), failures(served, "slow", "cancelled")

    async def run():
        aclient = aiogrpcclient.InferenceServerClient(url)
        try:
            inp = aiogrpcclient.InferInput("INPUT0", [1, SIZES[0]], "FP32")
            inp.set_data_from_numpy(rows(1))
            task = asyncio.ensure_future(aclient.infer("slow", [inp]))
            for _ in range(100):  # until the request is queued in the server
                await asyncio.sleep(0.05)
                if await asyncio.to_thread(pending, served[0].http_url, "slow") == 1:
                    break
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await aclient.close()

    asyncio.run(run())
    assert wait_for(lambda: failures(served, "slow", "cancelled") == cancels + 1)
    after = stats_of(client, "slow")
    assert count(after, "fail") == count(before, "fail") + 1
    assert int(after.get("execution_count", 0)) == 0
    assert client.is_server_ready()


# -- statistics -------------------------------------------------------------------------------------------------


def test_statistics(client):
    for i in range(3):
        client.infer("statm", [fp32_input(rows(2, seed=i))])
    s = stats_of(client, "statm")
    assert s["name"] == "statm" and s["version"] == "1"
    assert int(s["inference_count"]) == 6 and int(s["execution_count"]) == 3
    assert int(s["last_inference"]) > 0
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert count(s, key) == 3, key
    for key in ("success", "compute_infer"):
        assert int(s["inference_stats"][key]["ns"]) > 0, key
    assert [int(b["batch_size"]) for b in s["batch_stats"]] == [2]
    assert int(s["batch_stats"][0]["compute_infer"]["count"]) == 3
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {"mlp", "statm", "slow"} <= {m["name"] for m in everything}
    expect_error(lambda: client.get_inference_statistics("nope"), "NOT_FOUND", "unknown model 'nope'")


# -- repository administration ----------------------------------------------------------------------------------


def test_repository_load_and_unload_need_the_admin_token(client):
    expect_error(lambda: client.unload_model("spare"), "UNAUTHENTICATED", "authorization: Bearer")
    expect_error(lambda: client.unload_model("spare", headers={"authorization": "Bearer wrong"}), "PERMISSION_DENIED")
    expect_error(lambda: client.load_model("spare", headers={"authorization": "Bearer wrong"}), "PERMISSION_DENIED")
    assert client.is_model_ready("spare")
    auth = {"authorization": f"Bearer {TOKEN}"}
    client.unload_model("spare", headers=auth)
    assert not client.is_model_ready("spare")
    expect_error(_tc_infer(client, "spare", [fp32_input(rows(1))]), "NOT_FOUND", "unknown model 'spare'")
    client.load_model("spare", headers=auth)
    assert client.is_model_ready("spare")
    client.infer("spare", [fp32_input(rows(1))])
    expect_error(lambda: client.load_model("spare", headers=auth, config="{}"), "UNIMPLEMENTED", "parameters")


def test_loading_an_unknown_model_is_not_found_and_the_server_stays_ready(client):
    # a failed load must not leave an empty model behind (that would make the server not ready)
    expect_error(lambda: client.load_model("not-there", headers={"authorization": f"Bearer {TOKEN}"}), "NOT_FOUND", "not-there")
    assert client.is_server_ready()


# -- shutdown -----------------------------------------------------------------------------------------------------


def test_sigterm_answers_accepted_requests_and_refuses_new_ones(tmp_path):
    weights = write_mlp_onnx(tmp_path / "m" / "1" / "model.onnx", SIZES)
    # requests wait up to 1 s for a batch of 8 that never fills: they are queued when SIGTERM comes
    write_config(
        tmp_path / "m", mlp_config(SIZES, max_batch_size=8, preferred_batch_size=[8], max_queue_delay_microseconds=1_000_000)
    )
    with (
        ServerProcess(tmp_path, wait_ready=False) as server,
        closing(grpcclient.InferenceServerClient(server.grpc_url)) as stream_client,
    ):
        wait_grpc_ready(server)
        xs = [rows(n, seed=n) for n in (1, 2, 3)]
        # an open stream with one request queued: answered, then the stream ends (UNAVAILABLE)
        # instead of holding the shutdown for the whole drain timeout
        streamed: queue.Queue = queue.Queue()
        stream_client.start_stream(callback=lambda result, error: streamed.put((result, error)))
        stream_client.async_stream_infer("m", [fp32_input(xs[0])], request_id="s")

        async def run():
            client = aiogrpcclient.InferenceServerClient(server.grpc_url)
            try:

                async def one(x):
                    inp = aiogrpcclient.InferInput("INPUT0", list(x.shape), "FP32")
                    inp.set_data_from_numpy(x)
                    return (await client.infer("m", [inp])).as_numpy("OUTPUT0")

                accepted = [asyncio.ensure_future(one(x)) for x in xs]
                for _ in range(100):  # until all of them (and the streamed one) are queued
                    await asyncio.sleep(0.05)
                    if await asyncio.to_thread(pending, server.http_url, "m") == len(xs) + 1:
                        break
                assert not any(t.done() for t in accepted)
                server.proc.send_signal(signal.SIGTERM)
                for _ in range(100):  # until the server has started draining
                    await asyncio.sleep(0.02)
                    if "draining" in server.output():
                        break
                with pytest.raises(InferenceServerException) as late:
                    await one(xs[0])
                assert "UNAVAILABLE" in late.value.status(), late.value
                return await asyncio.gather(*accepted)
            finally:
                await client.close()

        t = time.monotonic()
        answers = asyncio.run(run())
        for x, out in zip(xs, answers):
            np.testing.assert_allclose(out, mlp_reference(x, weights), rtol=1e-5, atol=1e-5)
        result, error = streamed.get(timeout=10)
        assert error is None, error
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), mlp_reference(xs[0], weights), rtol=1e-5, atol=1e-5)
        result, error = streamed.get(timeout=10)
        assert result is None and "UNAVAILABLE" in error.status() and "shutting down" in error.message(), error
        assert server.proc.wait(30) == 0, server.output()
        assert time.monotonic() - t < 10  # not the 30 s drain timeout
        assert "draining" in server.output()
