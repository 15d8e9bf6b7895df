"""gRPC conformance over the wire, run unchanged against both transports (`--grpc-transport
grpcio`, the reference, and `fast`, Parity's own HTTP/2 layer): every test runs once per transport
(ids `[grpcio]` / `[fast]`, select one with `-k`).

Clients: tritonclient (sync and asyncio, unary and streaming) and grpcio's own generated stub
(`grpc_service_pb2_grpc`), sync and asyncio, for what tritonclient will not send (malformed raw
contents, typed contents, exact message sizes) and for what it hides (status details, metadata).
Beyond single calls: deadlines and cancellation of queued requests, 64 MiB messages and the
message limit, 1,000 concurrent streams on one connection, many connections, request metadata."""

from __future__ import annotations

import asyncio
import queue
import signal
import time
import urllib.request
from contextlib import closing, contextmanager

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
BIG_LIMIT = 80 << 20  # the message limit of the big-message server: 64 MiB and headroom
TRANSPORTS = ["grpcio", "fast"]


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
    # Queued requests wait 500 ms for a batch of 8, then run: answered after a stream half-closes.
    write_mlp_onnx(root / "lag" / "1" / "model.onnx", SIZES)
    write_config(
        root / "lag",
        mlp_config(SIZES, max_batch_size=MAX_BATCH, preferred_batch_size=[MAX_BATCH], max_queue_delay_microseconds=500_000),
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


@pytest.fixture(scope="module", params=TRANSPORTS)
def grpc_transport(request) -> str:
    """The gRPC transport under test: every test of this module runs once for each."""
    return request.param


# The module each transport is served by, and the one it must not load.
TRANSPORT_MODULES = {"grpcio": ("grpc", "grpc_fast"), "fast": ("grpc_fast", "grpc")}


@contextmanager
def serving(root, grpc_transport: str, *args: str):
    """A server on `root` with the transport under test, ready over gRPC; on leaving, it must have
    drained and exited cleanly, with no unexpected error logged.  Its imports are logged
    (PYTHONPROFILEIMPORTTIME) to check that the transport under test is the one serving."""
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    with ServerProcess(root, "--grpc-transport", grpc_transport, *args, env=env, wait_ready=False) as server:
        wait_grpc_ready(server)
        imported = {line.rsplit("|", 1)[-1].strip() for line in server.output().splitlines() if line.startswith("import time:")}
        used, unused = (f"parity.serving.transport.{m}" for m in TRANSPORT_MODULES[grpc_transport])
        assert used in imported and unused not in imported, (grpc_transport, sorted(m for m in imported if "transport" in m))
        yield server
        rc = server.stop()
        output = server.output()
    assert rc == 0, output
    assert "Traceback" not in output and "unexpected error" not in output, output


@pytest.fixture(scope="module")
def served(tmp_path_factory, grpc_transport):
    root = tmp_path_factory.mktemp("repo")
    weights = build_repository(root)
    args = ("--admin-token", TOKEN, "--max-body-bytes", str(MAX_BODY), "--repository-poll-secs", "3600")
    with serving(root, grpc_transport, *args) as server:
        yield server, weights


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


# No client-side limit on message sizes: the server's limit is what is under test.
UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@pytest.fixture(scope="module")
def big_served(tmp_path_factory, grpc_transport):
    """A server of its own for messages of 64 MiB and more: --max-body-bytes BIG_LIMIT, identity models
    with one variable dimension."""
    from onnx import TensorProto

    root = tmp_path_factory.mktemp("big")
    for name, elem, datatype in (("blob", TensorProto.FLOAT, "FP32"), ("blob64", TensorProto.INT64, "INT64")):
        write_identity_onnx(root / name / "1" / "model.onnx", elem, ["n"])
        write_config(
            root / name,
            {
                "platform": "onnxruntime_onnx",
                "max_batch_size": 0,
                "inputs": [{"name": "IN", "datatype": datatype, "shape": [-1]}],
                "outputs": [{"name": "OUT", "datatype": datatype, "shape": [-1]}],
            },
        )
    with serving(root, grpc_transport, "--max-body-bytes", str(BIG_LIMIT), "--repository-poll-secs", "3600") as server:
        yield server


@pytest.fixture(scope="module")
def big_stub(big_served):
    channel = grpc.insecure_channel(big_served.grpc_url, options=UNLIMITED)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


# -- helpers --------------------------------------------------------------------------------------------


def fp32_input(x, name="INPUT0"):
    inp = grpcclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def aio_input(x, name="INPUT0", datatype="FP32"):
    inp = aiogrpcclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def mlp_request(x, rid="", model="mlp", **kw):
    """A ModelInferRequest for the MLP with x as raw contents."""
    return raw_request(model, [("INPUT0", "FP32", list(x.shape))], [x.tobytes()], id=rid, **kw)


def mlp_output(resp) -> np.ndarray:
    assert [(o.name, o.datatype) for o in resp.outputs] == [("OUTPUT0", "FP32")], resp.outputs
    return np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(list(resp.outputs[0].shape))


def assert_mlp(out, x, weights):
    np.testing.assert_allclose(out, mlp_reference(x, weights), rtol=1e-5, atol=1e-5)


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


async def await_for(predicate, timeout=5.0):
    """wait_for from a coroutine: the (blocking) predicate runs in a thread, the loop goes on."""
    return await asyncio.to_thread(wait_for, predicate, timeout)


def connections_to(url) -> set[str]:
    """The local ends (hex address:port) of this machine's established TCP connections to `url`:
    each is one HTTP/2 connection a client opened to the server."""
    port = int(url.rsplit(":", 1)[1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # grpcio connects IPv6 sockets to v4-mapped addresses
        with open(table) as f:
            next(f)
            for line in f:
                local, remote, state = line.split()[1:4]
                if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                    found.add(local)
    return found


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


def test_aio_client_infer(url, weights):
    """tritonclient.grpc.aio: the informational calls, infer for each kind of model, an error."""

    async def run():
        async with aiogrpcclient.InferenceServerClient(url) as c:
            assert await c.is_server_live() and await c.is_server_ready()
            assert await c.is_model_ready("mlp") and not await c.is_model_ready("nope")
            md = await c.get_model_metadata("mlp", as_json=True)
            assert md["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": ["-1", str(SIZES[0])]}]
            x = rows(3, seed=7)
            result = await c.infer("mlp", [aio_input(x)], request_id="aio-1")
            assert result.get_response().id == "aio-1"
            assert_mlp(result.as_numpy("OUTPUT0"), x, weights)
            a = np.arange(8, dtype=np.float32).reshape(2, 4)
            result = await c.infer("add", [aio_input(a, "A"), aio_input(a * 2, "B")])
            np.testing.assert_array_equal(result.as_numpy("SUM"), a * 3)
            ids = np.array([[-(2**40), 0, 7]], np.int64)
            np.testing.assert_array_equal((await c.infer("ids", [aio_input(ids, "IN", "INT64")])).as_numpy("OUT"), ids)
            strs = np.array([b"a", b"", "ü".encode()], dtype=object)
            assert (await c.infer("strs", [aio_input(strs, "IN", "BYTES")])).as_numpy("OUT").tolist() == strs.tolist()
            with pytest.raises(InferenceServerException) as info:
                await c.infer("nope", [aio_input(x)])
            return info.value

    error = asyncio.run(run())
    assert error.status() == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in error.message(), error


# -- grpcio's own generated client ------------------------------------------------------------------------------

OK = grpc.StatusCode.OK
CONFORMANCE_MD = (("x-conformance", "stub"),)


def test_generated_stub_unary_calls_their_status_and_metadata(stub, weights):
    """Each unary method through grpcio's generated stub: OK with empty status details and no initial
    or trailing metadata; an error carries its code and its message as the status details."""
    calls = [
        (stub.ServerLive, pb.ServerLiveRequest(), lambda r: r.live),
        (stub.ServerReady, pb.ServerReadyRequest(), lambda r: r.ready),
        (stub.ModelReady, pb.ModelReadyRequest(name="mlp", version="1"), lambda r: r.ready),
        (stub.ModelReady, pb.ModelReadyRequest(name="nope"), lambda r: not r.ready),
        (stub.ServerMetadata, pb.ServerMetadataRequest(), lambda r: r.name == "parity" and "statistics" in r.extensions),
        (stub.ModelMetadata, pb.ModelMetadataRequest(name="mlp"), lambda r: r.name == "mlp" and list(r.versions) == ["1"]),
        (stub.ModelConfig, pb.ModelConfigRequest(name="mlp"), lambda r: r.config.max_batch_size == MAX_BATCH),
        (stub.ModelStatistics, pb.ModelStatisticsRequest(name="mlp"), lambda r: [m.name for m in r.model_stats] == ["mlp"]),
        (stub.RepositoryIndex, pb.RepositoryIndexRequest(), lambda r: "mlp" in {m.name for m in r.models}),
    ]
    for method, request, check in calls:
        response, call = method.with_call(request, metadata=CONFORMANCE_MD, timeout=10)
        assert check(response), (request, response)
        assert (call.code(), call.details()) == (OK, ""), request
        assert call.initial_metadata() == () and call.trailing_metadata() == (), request

    x = rows(4, seed=8)
    response, call = stub.ModelInfer.with_call(mlp_request(x, "stub-1"), metadata=CONFORMANCE_MD, timeout=10)
    assert (response.model_name, response.model_version, response.id) == ("mlp", "1", "stub-1")
    assert_mlp(mlp_output(response), x, weights)
    assert (call.code(), call.details(), call.initial_metadata(), call.trailing_metadata()) == (OK, "", (), ())
    # the future API: eight calls in flight at once on the channel
    futures = [stub.ModelInfer.future(mlp_request(rows(i + 1, seed=i), f"f{i}"), timeout=10) for i in range(MAX_BATCH)]
    for i, f in enumerate(futures):
        response = f.result()
        assert response.id == f"f{i}" and f.code() == OK
        assert_mlp(mlp_output(response), rows(i + 1, seed=i), weights)

    # errors: the code, the message as the details, no metadata
    for call, code, fragment in [
        (lambda: stub.ModelInfer(mlp_request(x, model="nope"), metadata=CONFORMANCE_MD), "NOT_FOUND", "unknown model 'nope'"),
        (lambda: stub.ModelInfer(mlp_request(rows(MAX_BATCH + 1))), "INVALID_ARGUMENT", f"batch size {MAX_BATCH + 1}"),
        (lambda: stub.ModelConfig(pb.ModelConfigRequest(name="mlp", version="3")), "NOT_FOUND", "version 3"),
        (lambda: stub.ModelStatistics(pb.ModelStatisticsRequest(name="nope")), "NOT_FOUND", "unknown model 'nope'"),
        (lambda: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="spare")), "UNAUTHENTICATED", "Bearer"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            call()
        e = info.value
        assert (e.code(), e.initial_metadata(), e.trailing_metadata()) == (getattr(grpc.StatusCode, code), (), ()), e
        assert fragment in e.details(), e.details()


# -- streaming ------------------------------------------------------------------------------------------------


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
    assert wait_for(lambda: pending(served[0].http_url, "slow") == 0)
    assert wait_for(lambda: failures(served, "slow", "cancelled") == cancels + 2)
    assert int(stats_of(client, "slow").get("execution_count", 0)) == 0


def test_stream_half_close_waits_for_the_queued_answers(served, url, weights):
    """stop_stream() half-closes the stream while its requests are still queued in the server: they
    are answered before the stream ends, and stop_stream() returns only then."""
    xs = {str(i): rows(i + 1, seed=30 + i) for i in range(3)}  # 6 rows: no full batch, they wait 500 ms
    client = grpcclient.InferenceServerClient(url)
    results: queue.Queue = queue.Queue()
    try:
        client.start_stream(callback=lambda result, error: results.put((result, error)), headers={"x-conformance": "half-close"})
        for rid, x in xs.items():
            client.async_stream_infer("lag", [fp32_input(x)], request_id=rid)
        assert wait_for(lambda: pending(served[0].http_url, "lag") == len(xs))
        assert results.empty()
        client.stop_stream()
    finally:
        client.close()
    got = {}
    while not results.empty():
        result, error = results.get_nowait()
        assert error is None, error
        got[result.get_response().id] = result.as_numpy("OUTPUT0")
    assert sorted(got) == sorted(xs)
    for rid, x in xs.items():
        assert_mlp(got[rid], x, weights)


def test_aio_stream_infer_ping_pong(url, weights):
    """tritonclient.grpc.aio stream_infer: each request is sent only once the previous one is answered
    (answers flow while the client's side of the stream is open); an error answer does not end the
    stream; the stream ends once the request iterator is exhausted and everything is answered."""
    xs = [rows(i + 1, seed=50 + i) for i in range(4)]
    a = np.arange(8, dtype=np.float32).reshape(2, 4)

    async def run():
        answered: asyncio.Queue = asyncio.Queue()

        async def requests():
            for i, x in enumerate(xs):
                yield {"model_name": "mlp", "inputs": [aio_input(x)], "request_id": str(i)}
                await asyncio.wait_for(answered.get(), 10)
                if i == 1:
                    bad = np.ones((1, SIZES[0] + 1), np.float32)
                    yield {"model_name": "mlp", "inputs": [aio_input(bad)], "request_id": "bad"}
                    await asyncio.wait_for(answered.get(), 10)
            yield {"model_name": "add", "inputs": [aio_input(a, "A"), aio_input(a, "B")], "request_id": "add"}

        async with aiogrpcclient.InferenceServerClient(url) as c:
            got = []
            async for result, error in c.stream_infer(requests(), headers={"x-conformance": "aio-stream"}):
                got.append((result, error))
                answered.put_nowait(None)
            return got

    got = asyncio.run(run())
    assert [r.get_response().id if r else None for r, _ in got] == ["0", "1", None, "2", "3", "add"]
    for i, j in enumerate((0, 1, 3, 4)):
        result, error = got[j]
        assert error is None and result.get_response().model_name == "mlp"
        assert_mlp(result.as_numpy("OUTPUT0"), xs[i], weights)
    assert "has shape [1, 17]" in got[2][1].message(), got[2][1]
    np.testing.assert_array_equal(got[5][0].as_numpy("SUM"), a + a)


@pytest.mark.parametrize("end", ["cancel", "deadline"])
def test_aio_stream_ending_early_drops_its_queued_requests(served, url, client, end):
    """An asyncio stream with two requests queued (on 'slow', never executed) is cancelled by the
    client, or its gRPC deadline passes: the server drops both, nothing is executed."""
    http = served[0].http_url
    before = stats_of(client, "slow")
    lost = failures(served, "slow", "cancelled") + failures(served, "slow", "timeout")

    async def run():
        async with aiogrpcclient.InferenceServerClient(url) as c:

            async def requests():
                for i in range(2):
                    yield {"model_name": "slow", "inputs": [aio_input(rows(1))], "request_id": str(i)}

            responses = c.stream_infer(requests(), stream_timeout=1.0 if end == "deadline" else None)
            first = asyncio.ensure_future(responses.__anext__())
            assert await await_for(lambda: pending(http, "slow") == 2)
            assert not first.done()
            if end == "cancel":
                responses.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await first
            else:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await first
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value

    asyncio.run(run())
    assert wait_for(lambda: pending(http, "slow") == 0)
    assert wait_for(lambda: failures(served, "slow", "cancelled") + failures(served, "slow", "timeout") == lost + 2)
    after = stats_of(client, "slow")
    assert count(after, "fail") == count(before, "fail") + 2
    assert int(after.get("execution_count", 0)) == 0 and count(after, "success") == 0


def test_generated_stub_stream_infer(stub, weights):
    """ModelStreamInfer through grpcio's generated client: an error is answered in-band with the
    request's model and id; the stream ends OK, with no metadata, once the client half-closes and
    everything is answered."""
    xs = {f"s{i}": rows(i + 1, seed=40 + i) for i in range(5)}
    requests = [mlp_request(x, rid) for rid, x in xs.items()]
    requests.insert(2, mlp_request(np.ones((1, SIZES[0] + 1), np.float32), "bad"))
    requests.append(mlp_request(rows(1), "unknown", model="nope"))
    call = stub.ModelStreamInfer(iter(requests), metadata=CONFORMANCE_MD, timeout=30)
    responses = list(call)
    assert (call.code(), call.details(), call.initial_metadata(), call.trailing_metadata()) == (OK, "", (), ())
    assert len(responses) == len(requests)
    answers = {r.infer_response.id: r.infer_response for r in responses if not r.error_message}
    errors = {r.infer_response.id: r for r in responses if r.error_message}
    assert sorted(answers) == sorted(xs) and sorted(errors) == ["bad", "unknown"]
    for rid, x in xs.items():
        assert (answers[rid].model_name, answers[rid].model_version) == ("mlp", "1")
        assert_mlp(mlp_output(answers[rid]), x, weights)
    assert "has shape [1, 17]" in errors["bad"].error_message and errors["bad"].infer_response.model_name == "mlp"
    assert "unknown model 'nope'" in errors["unknown"].error_message and errors["unknown"].infer_response.model_name == "nope"


# -- concurrency ------------------------------------------------------------------------------------------------


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


def test_a_thousand_concurrent_streams_on_one_connection(url, weights):
    """1,000 ModelInfer calls at once on one grpc.aio channel: one HTTP/2 connection carrying 1,000
    concurrent streams; every call answered, each with its own answer."""
    rng = np.random.default_rng(1000)
    xs = [rng.standard_normal((int(n), SIZES[0])).astype(np.float32) for n in rng.integers(1, 4, size=1000)]
    before = connections_to(url)

    async def run():
        async with grpc.aio.insecure_channel(url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            answers = await asyncio.gather(*(stub.ModelInfer(mlp_request(x, str(i)), timeout=60) for i, x in enumerate(xs)))
            return answers, connections_to(url) - before

    answers, opened = asyncio.run(run())
    assert len(opened) == 1, opened
    assert len(answers) == len(xs)
    for i, response in enumerate(answers):
        assert response.id == str(i)
        assert_mlp(mlp_output(response), xs[i], weights)


def test_many_connections_at_once(url, weights):
    """64 channels, each its own connection (no shared subchannel), each with 4 calls in flight."""
    n_channels, per_channel = 64, 4
    rng = np.random.default_rng(64)
    xs = [[rng.standard_normal((int(rng.integers(1, 4)), SIZES[0])).astype(np.float32) for _ in range(per_channel)]
          for _ in range(n_channels)]  # fmt: skip
    before = connections_to(url)

    async def run():
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(url, options=options) for _ in range(n_channels)]
        try:

            async def on(channel, c):
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                return await asyncio.gather(
                    *(stub.ModelInfer(mlp_request(x, f"{c}.{k}"), timeout=60) for k, x in enumerate(xs[c]))
                )

            answers = await asyncio.gather(*(on(ch, c) for c, ch in enumerate(channels)))
            return answers, connections_to(url) - before
        finally:
            await asyncio.gather(*(ch.close() for ch in channels))

    answers, opened = asyncio.run(run())
    assert len(opened) == n_channels, opened
    for c, responses in enumerate(answers):
        for k, response in enumerate(responses):
            assert response.id == f"{c}.{k}"
            assert_mlp(mlp_output(response), xs[c][k], weights)


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
    expect_error(_tc_infer(client, "mlp", [ok, fp32_input(x, "EXTRA")]), "INVALID_ARGUMENT", "no input 'EXTRA'", "INPUT0")
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


# -- 64 MiB messages and the message limit (a server of their own) -----------------------------------------


def exact_size_request(total: int) -> tuple[pb.ModelInferRequest, bytes]:
    """A valid request for 'blob' (FP32 identity) whose serialized size is exactly `total` bytes,
    padded through its id, and its raw contents."""
    n = (total - 64) // 4
    raw = np.random.default_rng(total).random(n, dtype=np.float32).tobytes()
    out = pb.ModelInferRequest.InferRequestedOutputTensor(name="OUT")  # makes the request longer than its answer
    req = raw_request("blob", [("IN", "FP32", [n])], [raw], model_version="1", outputs=[out])
    pad = total - req.ByteSize() - 2  # the id field: a 1-byte tag, a 1-byte length, the id
    assert 0 < pad < 128, pad
    req.id = "p" * pad
    assert req.ByteSize() == total
    return req, raw


def test_64_mib_messages_round_trip_byte_exact(big_served, big_stub):
    """A 64 MiB FP32 tensor through grpcio's stub and a 64 MiB INT64 tensor through tritonclient (its
    channel allows 2 GiB): the 64 MiB answers are the inputs, byte for byte."""
    n = (64 << 20) // 4
    raw = np.random.default_rng(64).random(n, dtype=np.float32).tobytes()
    response, call = big_stub.ModelInfer.with_call(raw_request("blob", [("IN", "FP32", [n])], [raw], id="64MiB"), timeout=60)
    assert call.code() == OK
    assert (response.model_name, response.id, response.outputs[0].datatype) == ("blob", "64MiB", "FP32")
    assert list(response.outputs[0].shape) == [n] and len(response.raw_output_contents) == 1
    assert response.raw_output_contents[0] == raw
    del response, raw

    x = np.random.default_rng(65).integers(-(2**62), 2**62, size=(64 << 20) // 8, dtype=np.int64)
    inp = grpcclient.InferInput("IN", list(x.shape), "INT64")
    inp.set_data_from_numpy(x)
    with closing(grpcclient.InferenceServerClient(big_served.grpc_url)) as client:
        out = client.infer("blob64", [inp], client_timeout=60).as_numpy("OUT")
    assert out.dtype == np.int64 and out.shape == x.shape
    assert out.tobytes() == x.tobytes()


def test_message_limit_is_exact_and_the_connection_survives_a_refusal(big_served, big_stub):
    """A message of exactly --max-body-bytes is served; one byte more is refused with
    RESOURCE_EXHAUSTED naming the limit, and the same connection goes on serving."""
    url = big_served.grpc_url
    req, raw = exact_size_request(BIG_LIMIT)
    response = big_stub.ModelInfer(req, timeout=60)
    n = len(raw) // 4
    expected = pb.ModelInferResponse(model_name="blob", model_version="1", id=req.id, raw_output_contents=[raw])
    expected.outputs.add(name="OUT", datatype="FP32", shape=[n])
    assert expected.ByteSize() <= BIG_LIMIT  # the answer is within the limit too
    assert response == expected
    del req, response, expected
    connections = connections_to(url)
    assert len(connections) == 1, connections

    over, _ = exact_size_request(BIG_LIMIT + 1)
    expect_error(lambda: big_stub.ModelInfer(over, timeout=60), "RESOURCE_EXHAUSTED", str(BIG_LIMIT))
    small = np.arange(10, dtype=np.float32)
    response = big_stub.ModelInfer(raw_request("blob", [("IN", "FP32", [10])], [small.tobytes()]), timeout=10)
    assert response.raw_output_contents[0] == small.tobytes()
    assert connections_to(url) == connections


# -- deadlines and cancellation ------------------------------------------------------------------------------


async def aio_infer(url, model, x, **kw):
    async with aiogrpcclient.InferenceServerClient(url) as c:
        return await c.infer(model, [aio_input(x)], **kw)


@pytest.mark.parametrize("via", ["tritonclient", "tritonclient-aio", "stub"])
def test_grpc_deadline_expiring_while_queued(served, url, client, stub, via):
    """A gRPC deadline (grpc-timeout) passing while the request waits in the queue: DEADLINE_EXCEEDED
    in time, counted by the server as a timeout, and the request is never executed."""
    x = rows(1)
    call = {
        "tritonclient": lambda: client.infer("slow", [fp32_input(x)], client_timeout=0.3),
        "tritonclient-aio": lambda: asyncio.run(aio_infer(url, "slow", x, client_timeout=0.3)),
        "stub": lambda: stub.ModelInfer(mlp_request(x, model="slow"), timeout=0.3),
    }[via]
    before, timeouts = stats_of(client, "slow"), failures(served, "slow", "timeout")
    t = time.monotonic()
    expect_error(call, "DEADLINE_EXCEEDED")
    assert time.monotonic() - t < 5
    assert wait_for(lambda: failures(served, "slow", "timeout") == timeouts + 1)
    assert wait_for(lambda: pending(served[0].http_url, "slow") == 0)
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
    assert pending(served[0].http_url, "slow") == 0
    assert int(after.get("execution_count", 0)) == 0


@pytest.mark.parametrize("via", ["tritonclient-aio", "stub-future"])
def test_client_cancel_drops_the_queued_request(served, url, client, stub, via):
    """A client cancels its call (RST_STREAM) while the request waits in the queue: the server drops
    it (the pending gauge goes back to 0), counts it as cancelled and never executes it."""
    http = served[0].http_url
    before, cancels = stats_of(client, "slow"), failures(served, "slow", "cancelled")

    async def run():
        async with aiogrpcclient.InferenceServerClient(url) as c:
            task = asyncio.ensure_future(c.infer("slow", [aio_input(rows(1))]))
            assert await await_for(lambda: pending(http, "slow") == 1)  # queued in the server
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    if via == "tritonclient-aio":
        asyncio.run(run())
    else:
        future = stub.ModelInfer.future(mlp_request(rows(1), model="slow"))
        assert wait_for(lambda: pending(http, "slow") == 1)
        assert not future.done()
        assert future.cancel()
        with pytest.raises(grpc.FutureCancelledError):
            future.result()
    assert wait_for(lambda: pending(http, "slow") == 0)
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


# -- request metadata and compression ---------------------------------------------------------------------


def test_custom_request_metadata_changes_nothing(client, stub, url, weights):
    """Metadata the server does not use: custom keys, a repeated key, a binary (-bin) value, a 1 KiB
    value, an empty value, an authorization header on calls that need none; unary and streaming."""
    x = rows(2, seed=60)
    headers = {
        "x-request-origin": "conformance",
        "x-trace-id": "0af7651916cd43dd8448eb211c80319c",
        "authorization": "Bearer nope",
    }
    assert_mlp(client.infer("mlp", [fp32_input(x)], headers=headers).as_numpy("OUTPUT0"), x, weights)
    assert client.is_model_ready("mlp", headers=headers)
    metadata = (
        ("x-custom", "a"),
        ("x-custom", "b"),
        ("x-blob-bin", bytes(range(256))),
        ("x-long", "v" * 1024),
        ("x-empty", ""),
        ("authorization", "Bearer nope"),
    )
    response, call = stub.ModelInfer.with_call(mlp_request(x, "md"), metadata=metadata, timeout=10)
    assert response.id == "md" and call.code() == OK
    assert_mlp(mlp_output(response), x, weights)
    assert stub.ServerReady(pb.ServerReadyRequest(), metadata=metadata).ready
    (streamed,) = stub.ModelStreamInfer(iter([mlp_request(x, "md-stream")]), metadata=metadata, timeout=10)
    assert not streamed.error_message and streamed.infer_response.id == "md-stream"
    assert_mlp(mlp_output(streamed.infer_response), x, weights)

    async def run():
        async with aiogrpcclient.InferenceServerClient(url) as c:
            return (await c.infer("mlp", [aio_input(x)], headers=headers)).as_numpy("OUTPUT0")

    assert_mlp(asyncio.run(run()), x, weights)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_messages(client, stub, weights, algorithm):
    """Messages the client compresses (grpc-encoding gzip / deflate: tritonclient's and perf_analyzer's
    compression option) are answered; the limit applies to the decompressed message."""
    x = rows(3, seed=70)
    result = client.infer("mlp", [fp32_input(x)], compression_algorithm=algorithm)
    assert_mlp(result.as_numpy("OUTPUT0"), x, weights)
    compression = {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}[algorithm]
    (streamed,) = stub.ModelStreamInfer(iter([mlp_request(x, "z")]), compression=compression, timeout=10)
    assert not streamed.error_message and streamed.infer_response.id == "z"
    assert_mlp(mlp_output(streamed.infer_response), x, weights)
    zeros = np.zeros((1, 2 * MAX_BODY // 8), np.int64)  # 2 MiB, a few KiB compressed
    request = raw_request("ids", [("IN", "INT64", list(zeros.shape))], [zeros.tobytes()])
    expect_error(lambda: stub.ModelInfer(request, compression=compression, timeout=10), "RESOURCE_EXHAUSTED")
    assert client.is_server_ready()


# -- repository administration ----------------------------------------------------------------------------------


def test_repository_load_and_unload_need_the_admin_token(client, stub):
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
    # the same through grpcio's stub: the token travels as request metadata
    bearer = (("authorization", f"Bearer {TOKEN}"),)
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="spare"), metadata=bearer)
    assert not stub.ModelReady(pb.ModelReadyRequest(name="spare")).ready
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="spare"), metadata=bearer)
    assert stub.ModelReady(pb.ModelReadyRequest(name="spare")).ready
    expect_error(
        lambda: stub.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name="spare"), metadata=(("authorization", "Bearer x"),)
        ),
        "PERMISSION_DENIED",
    )


def test_loading_an_unknown_model_is_not_found_and_the_server_stays_ready(client):
    # a failed load must not leave an empty model behind (that would make the server not ready)
    expect_error(lambda: client.load_model("not-there", headers={"authorization": f"Bearer {TOKEN}"}), "NOT_FOUND", "not-there")
    assert client.is_server_ready()


# -- shutdown -----------------------------------------------------------------------------------------------------


def test_after_goaway_the_last_answer_is_left_for_the_client_to_read_before_the_connection_closes(tmp_path):
    """A call still queued when SIGTERM comes is answered after the GOAWAY; the fast transport
    then leaves the connection open for the client to close (for a grace period) instead of
    closing right behind the trailers: grpc-core reports a call whose trailers arrived just
    before the socket closed as "Stream removed (Socket closed)" (seen under load before)."""
    from parity.testing.h2client import FrameType, H2Client

    weights = write_mlp_onnx(tmp_path / "m" / "1" / "model.onnx", SIZES)
    write_config(tmp_path / "m", mlp_config(SIZES, max_batch_size=8, preferred_batch_size=[8], max_queue_delay_microseconds=1_000_000))
    with ServerProcess(tmp_path, "--grpc-transport", "fast", wait_ready=False) as server:
        wait_grpc_ready(server)
        host, port = server.grpc_url.rsplit(":", 1)
        with H2Client((host, int(port))) as c:
            c.handshake()
            x = rows(1, seed=3)
            msg = pb.ModelInferRequest(
                model_name="m", inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=[1, SIZES[0]])],
                raw_input_contents=[x.astype("<f4").tobytes()],
            ).SerializeToString()  # fmt: skip
            c.send_headers(1, c.grpc_headers("ModelInfer"))
            c.send_data(1, b"\x00" + len(msg).to_bytes(4, "big") + msg, end_stream=True)
            assert wait_for(lambda: pending(server.http_url, "m") == 1, timeout=10)
            server.proc.send_signal(signal.SIGTERM)
            c.read_until(lambda f: f.type == FrameType.GOAWAY, timeout=10)
            st = c.wait_stream(1, timeout=10)
            assert st.grpc_status == 0, str(st)
            (reply,) = st.messages
            out = pb.ModelInferResponse.FromString(reply).raw_output_contents[0]
            np.testing.assert_allclose(np.frombuffer(out, "<f4").reshape(1, SIZES[-1]), mlp_reference(x, weights), rtol=1e-5, atol=1e-5)
            c.ping(b"stillup!")  # answered: the server did not close behind the answer
            ack = c.read_until(lambda f: f.type == FrameType.PING, timeout=10)
            assert ack.payload == b"stillup!"
        assert server.proc.wait(30) == 0, server.output()  # the client closed: the server is done


def test_sigterm_answers_accepted_requests_and_refuses_new_ones(tmp_path, grpc_transport):
    weights = write_mlp_onnx(tmp_path / "m" / "1" / "model.onnx", SIZES)
    # requests wait up to 1 s for a batch of 8 that never fills: they are queued when SIGTERM comes
    write_config(
        tmp_path / "m", mlp_config(SIZES, max_batch_size=8, preferred_batch_size=[8], max_queue_delay_microseconds=1_000_000)
    )
    with (
        ServerProcess(tmp_path, "--grpc-transport", grpc_transport, wait_ready=False) as server,
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
