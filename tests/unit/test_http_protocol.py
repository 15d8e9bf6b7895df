"""The HTTP transport's HTTP/1.1 behaviour, driven with raw sockets against a real server (the
HTTP transport, the core and an ONNX model) running in-process on its own uvloop thread."""

from __future__ import annotations

import asyncio
import gzip
import json
import contextlib
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvloop

from parity.config import ServerConfig
from parity.serving.core import InferenceCore
from parity.serving.models import Repository
from parity.serving.transport.http import HttpTransport
from parity.testing.models import mlp_config, mlp_reference, write_config, write_mlp_onnx

SIZES = [4, 8, 3]
MAX_BODY = 4096
MAX_HEADER = 2048
DELAY_US = 300_000  # the "delayed" model holds a lone request this long, waiting for a fuller batch


class ServerThread:
    """An HttpTransport on its own event loop in a daemon thread."""

    def __init__(self, repo: Path, **overrides):
        self.config = ServerConfig(
            model_repository=repo,
            host="127.0.0.1",
            http_port=0,
            max_body_bytes=MAX_BODY,
            max_header_bytes=MAX_HEADER,
            **overrides,
        )
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self._start(), 120)

    async def _start(self):
        self.repository = Repository(self.config.model_repository)
        self.core = InferenceCore(self.config, self.repository)
        self.repository.scan()
        failures = await self.repository.load_all()
        assert not failures, failures
        self.transport = HttpTransport(self.core, self.config)
        await self.transport.start()
        self.core.started = True
        self.port = self.transport.port

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn):
        """Run a plain function on the server's loop (to read its state safely)."""

        async def wrap():
            return fn()

        return self.call(wrap())

    def close(self):
        async def stop():
            await self.transport.stop(1.0)
            await self.repository.close()

        try:
            self.call(stop(), 60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("repo")
    weights = write_mlp_onnx(root / "mlp" / "1" / "model.onnx", SIZES)
    write_config(root / "mlp", mlp_config(SIZES, max_batch_size=8))
    write_mlp_onnx(root / "delayed" / "1" / "model.onnx", SIZES)
    write_config(
        root / "delayed",
        mlp_config(SIZES, max_batch_size=8, max_queue_delay_microseconds=DELAY_US, preferred_batch_size=[8]),
    )
    return root, weights


@pytest.fixture(scope="module")
def server(repo):
    s = ServerThread(repo[0])
    yield s
    s.close()


# -- a small raw client -------------------------------------------------------------------------


class Conn:
    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"connection closed before a complete response head; got {self.buf!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return int(status), headers

    def read_response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        status, headers = self.read_head()
        n = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("connection closed in the middle of a response body")
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (EOF or reset) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


def request(method: str, path: str, body: bytes = b"", headers: dict | None = None, version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: test"]
    hdrs = dict(headers or {})
    if body and "Transfer-Encoding" not in hdrs:
        hdrs.setdefault("Content-Length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def infer_body(x: np.ndarray, binary: bool = False) -> tuple[bytes, dict]:
    if binary:
        raw = x.astype(np.float32).tobytes()
        hdr = json.dumps(
            {
                "inputs": [
                    {"name": "INPUT0", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}
                ],
                "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
            }
        ).encode()
        return hdr + raw, {"Inference-Header-Content-Length": str(len(hdr))}
    doc = {"inputs": [{"name": "INPUT0", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}
    return json.dumps(doc).encode(), {}


def infer_request(x: np.ndarray, model: str = "mlp", binary: bool = False, extra: dict | None = None) -> bytes:
    body, headers = infer_body(x, binary)
    headers.update(extra or {})
    return request("POST", f"/v2/models/{model}/infer", body, headers)


def output_of(status: int, headers: dict, body: bytes) -> np.ndarray:
    assert status == 200, body
    if "inference-header-content-length" in headers:
        n = int(headers["inference-header-content-length"])
        doc = json.loads(body[:n])
        out = doc["outputs"][0]
        assert out["parameters"]["binary_data_size"] == len(body) - n
        return np.frombuffer(body[n:], dtype=np.float32).reshape(out["shape"])
    out = json.loads(body)["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, SIZES[0])).astype(np.float32)


# -- keep-alive and connection handling ---------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(server, repo):
    weights = repo[1]
    with Conn(server.port) as c:
        for i in range(5):
            x = rows(i + 1, seed=i)
            c.send(infer_request(x, binary=bool(i % 2)))
            status, headers, body = c.read_response()
            assert "connection" not in headers
            np.testing.assert_allclose(output_of(status, headers, body), mlp_reference(x, weights), rtol=1e-5, atol=1e-5)
        c.send(request("GET", "/v2/health/live"))
        assert c.read_response()[0] == 200


def test_connection_close_is_honoured(server):
    with Conn(server.port) as c:
        c.send(request("GET", "/v2/health/ready", headers={"Connection": "close"}))
        status, headers, _ = c.read_response()
        assert status == 200 and headers["connection"] == "close"
        assert c.closed_by_server()


def test_http10_closes_unless_keep_alive_is_asked(server):
    with Conn(server.port) as c:
        c.send(request("GET", "/v2/health/live", version="1.0"))
        status, headers, _ = c.read_response()
        assert status == 200 and headers["connection"] == "close"
        assert c.closed_by_server()
    with Conn(server.port) as c:
        for _ in range(2):
            c.send(request("GET", "/v2/health/live", headers={"Connection": "keep-alive"}, version="1.0"))
            status, headers, _ = c.read_response()
            assert status == 200 and headers["connection"] == "keep-alive"
        assert not c.closed_by_server(timeout=0.2)


def test_pipelined_requests_are_answered_in_order_even_when_they_complete_out_of_order(server, repo):
    weights = repo[1]
    x1, x3 = rows(1, seed=1), rows(2, seed=3)
    # The first waits in the delayed model's queue; the second is answered at once; the third is fast.
    data = infer_request(x1, model="delayed") + request("GET", "/v2/models/mlp") + infer_request(x3, binary=True)
    with Conn(server.port) as c:
        t0 = time.perf_counter()
        c.send(data)
        r1, r2, r3 = c.read_response(), c.read_response(), c.read_response()
        assert time.perf_counter() - t0 >= DELAY_US * 1e-6 * 0.8
    np.testing.assert_allclose(output_of(*r1), mlp_reference(x1, weights), rtol=1e-5, atol=1e-5)
    assert r2[0] == 200 and json.loads(r2[2])["name"] == "mlp"
    np.testing.assert_allclose(output_of(*r3), mlp_reference(x3, weights), rtol=1e-5, atol=1e-5)


def test_pipelined_error_answers_keep_their_place(server):
    data = request("GET", "/v2/health/live") + request("GET", "/nowhere") + request("POST", "/v2/models/mlp/infer", b"{oops")
    with Conn(server.port) as c:
        c.send(data)
        assert [c.read_response()[0] for _ in range(3)] == [200, 404, 400]
        c.send(request("GET", "/v2/health/ready"))
        assert c.read_response()[0] == 200


def test_chunked_request_body(server, repo):
    x = rows(3, seed=7)
    body, headers = infer_body(x, binary=True)
    chunks = [body[i : i + 37] for i in range(0, len(body), 37)]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(ch), ch) for ch in chunks) + b"0\r\n\r\n"
    headers["Transfer-Encoding"] = "chunked"
    with Conn(server.port) as c:
        c.send(request("POST", "/v2/models/mlp/infer", encoded, headers))
        np.testing.assert_allclose(output_of(*c.read_response()), mlp_reference(x, repo[1]), rtol=1e-5, atol=1e-5)


def test_chunked_body_over_the_limit_is_refused(server):
    chunk = b"x" * 1000
    with Conn(server.port) as c:
        c.send(request("POST", "/v2/models/mlp/infer", b"", {"Transfer-Encoding": "chunked"}))
        try:
            for _ in range(MAX_BODY // 1000 + 2):
                c.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body = c.read_response()
        assert status == 400 and headers["connection"] == "close"
        assert str(MAX_BODY) in json.loads(body)["error"]
        assert c.closed_by_server()


def test_expect_100_continue(server, repo):
    x = rows(2, seed=11)
    body, headers = infer_body(x)
    headers["Expect"] = "100-continue"
    head = request("POST", "/v2/models/mlp/infer", body, headers)[: -len(body)]
    with Conn(server.port) as c:
        c.send(head)
        status, _ = c.read_head()
        assert status == 100
        c.send(body)
        np.testing.assert_allclose(output_of(*c.read_response()), mlp_reference(x, repo[1]), rtol=1e-5, atol=1e-5)


def test_expect_100_continue_over_the_limit_is_refused_without_reading_the_body(server):
    with Conn(server.port) as c:
        c.send(request("POST", "/v2/models/mlp/infer", headers={"Content-Length": str(MAX_BODY + 1), "Expect": "100-continue"}))
        status, headers, body = c.read_response()
        assert status == 400 and headers["connection"] == "close"
        message = json.loads(body)["error"]
        assert "limit" in message and str(MAX_BODY) in message
        assert c.closed_by_server()


def test_a_request_sent_byte_by_byte(server, repo):
    x = rows(1, seed=5)
    data = infer_request(x, binary=True)
    with Conn(server.port) as c:
        for i in range(len(data)):
            c.send(data[i : i + 1])
            if i % 16 == 0:
                time.sleep(0.001)
        np.testing.assert_allclose(output_of(*c.read_response()), mlp_reference(x, repo[1]), rtol=1e-5, atol=1e-5)
        c.send(request("GET", "/v2/health/live"))
        assert c.read_response()[0] == 200


def test_oversized_headers_are_refused_and_the_connection_closed(server):
    with Conn(server.port) as c:
        c.send(request("GET", "/v2/health/live", headers={"X-Big": "a" * (MAX_HEADER + 10)}))
        status, headers, body = c.read_response()
        assert status == 431 and headers["connection"] == "close"
        assert "limit" in json.loads(body)["error"]
        assert c.closed_by_server()


def test_oversized_body_is_refused_with_400_and_the_connection_closed(server):
    big = b"{" + b" " * (MAX_BODY + 100) + b"}"
    with Conn(server.port) as c:
        try:
            c.send(request("POST", "/v2/models/mlp/infer", big))
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body = c.read_response()
        assert status == 400 and headers["connection"] == "close"
        assert "--max-body-bytes" in json.loads(body)["error"]
        assert c.closed_by_server()


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /v2/health/live HTTP/9.9\r\n\r\n",
        b"GET /v2 health HTTP/1.1\r\n\r\n",
        b"POST /v2/repository/index HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /v2/repository/index HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_malformed_requests_get_400_and_close(server, raw):
    with Conn(server.port) as c:
        c.send(raw)
        status, headers, body = c.read_response()
        assert status == 400 and headers["connection"] == "close"
        assert json.loads(body)["error"]
        assert c.closed_by_server()


def test_a_connection_cut_in_the_middle_of_a_request_does_not_hurt_the_server(server):
    with Conn(server.port) as c:
        c.send(b'POST /v2/models/mlp/infer HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"inp')
        c.sock.shutdown(socket.SHUT_WR)
        status, _, body = c.read_response()
        assert status == 400 and "middle of a request" in json.loads(body)["error"]
    with Conn(server.port) as c:
        c.send(request("GET", "/v2/health/live"))
        assert c.read_response()[0] == 200


def test_unknown_path_is_404_and_wrong_method_is_405(server):
    with Conn(server.port) as c:
        for path in ("/", "/v1/nothing", "/v2/models/mlp/versions/1/nothing", "/v2/models/mlp/a/b/c"):
            c.send(request("GET", path))
            status, headers, body = c.read_response()
            assert status == 404, path
            assert "error" in json.loads(body)
        for method, path, allow in (
            ("GET", "/v2/models/mlp/infer", "POST"),
            ("DELETE", "/v2/health/live", "GET, HEAD"),
            ("POST", "/v2/models/mlp", "GET, HEAD"),
            ("GET", "/v2/repository/index", "POST"),
            ("PUT", "/v2/repository/models/mlp/load", "POST"),
        ):
            c.send(request(method, path))
            status, headers, body = c.read_response()
            assert status == 405, (method, path)
            assert headers["allow"] == allow
            assert method in json.loads(body)["error"]
        assert not c.closed_by_server(timeout=0.1)


def test_head_answers_without_a_body(server):
    with Conn(server.port) as c:
        c.send(request("HEAD", "/v2/models/mlp"))
        status, headers, _ = c.read_response(head_only=True)
        assert status == 200 and int(headers["content-length"]) > 0
        c.send(request("GET", "/v2/health/live"))
        status, _, body = c.read_response()
        assert status == 200 and body == b""


def test_upgrade_requests_are_answered_as_plain_http(server):
    data = request(
        "GET",
        "/v2/health/live",
        headers={"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA"},
    )
    with Conn(server.port) as c:
        c.send(data + request("GET", "/v2/health/ready"))
        assert c.read_response()[0] == 200
        assert c.read_response()[0] == 200


def test_gzip_request_body_and_response(server, repo):
    x = rows(8, seed=2)
    body, headers = infer_body(x)
    headers.update({"Content-Encoding": "gzip", "Accept-Encoding": "gzip"})
    with Conn(server.port) as c:
        c.send(request("POST", "/v2/models/mlp/infer", gzip.compress(body), headers))
        status, rheaders, rbody = c.read_response()
        if rheaders.get("content-encoding") == "gzip":
            rbody = gzip.decompress(rbody)
        np.testing.assert_allclose(output_of(status, rheaders, rbody), mlp_reference(x, repo[1]), rtol=1e-5, atol=1e-5)
        c.send(request("POST", "/v2/models/mlp/infer", b"not gzip", {"Content-Encoding": "gzip"}))
        assert c.read_response()[0] == 400
        c.send(request("POST", "/v2/models/mlp/infer", b"{}", {"Content-Encoding": "br"}))
        status, _, rbody = c.read_response()
        assert status == 400 and "Content-Encoding" in json.loads(rbody)["error"]


def test_metrics_and_index(server):
    with Conn(server.port) as c:
        c.send(request("GET", "/metrics"))
        status, headers, body = c.read_response()
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        assert b"parity_request_success_total" in body
        c.send(request("POST", "/v2/repository/index", b'{"ready": true}'))
        status, _, body = c.read_response()
        assert status == 200 and {m["name"] for m in json.loads(body)} == {"mlp", "delayed"}
        c.send(request("POST", "/v2/repository/index", b'{"ready": 1}'))
        assert c.read_response()[0] == 400
        c.send(request("POST", "/v2/repository/models/mlp/load"))
        status, _, body = c.read_response()
        assert status == 403 and "admin-token" in json.loads(body)["error"]


# -- cancellation and flow control --------------------------------------------------------------


def _version_stats(server, model):
    return server.run(lambda: server.repository.lookup(model, "").stats)


def test_a_client_disconnecting_cancels_its_queued_inference(server):
    stats = _version_stats(server, "delayed")
    before = server.run(lambda: stats.failures["cancelled"])
    executed = server.run(lambda: stats.inference_count)
    with Conn(server.port) as c:
        c.send(infer_request(rows(1), model="delayed"))
        deadline = time.monotonic() + 5
        while server.run(lambda: stats.pending()) == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert server.run(lambda: stats.pending()) == 1
    deadline = time.monotonic() + 5
    while server.run(lambda: stats.failures["cancelled"]) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.run(lambda: stats.failures["cancelled"]) == before + 1
    # The scheduler drops a cancelled request from its queue (lazily, when it next looks) and never runs it.
    deadline = time.monotonic() + 5
    while server.run(lambda: stats.pending()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.run(lambda: stats.pending()) == 0
    assert server.run(lambda: stats.inference_count) == executed


def test_a_client_that_does_not_read_is_not_buffered_without_bound(server):
    """Pipeline requests with large answers and read none: once the socket's buffer is above its
    high-water mark the server holds requests (not answers) and stops reading the connection."""
    one = request("GET", "/metrics")
    with Conn(server.port) as c:
        c.send(one)
        status, _, body = c.read_response()
        assert status == 200
        metrics_size = len(body)
        n = (40_000_000 // metrics_size) + 1  # answers far beyond what the kernel buffers hold
        payload = one * n
        c.sock.setblocking(False)
        view, pos, deadline = memoryview(payload), 0, time.monotonic() + 5
        while pos < len(payload) and time.monotonic() < deadline:
            try:
                pos += c.sock.send(view[pos:])
            except BlockingIOError:
                time.sleep(0.01)

        def state():
            return [
                (k.read_paused, k.transport.get_write_buffer_size(), len(k.backlog))
                for k in server.transport.connections
                if k.transport is not None and k.send_seq > 1
            ]

        deadline = time.monotonic() + 5
        while not (server.run(state) and server.run(state)[0][0]) and time.monotonic() < deadline:
            time.sleep(0.02)  # until the server stops reading this connection
        ((paused, buffered, _),) = server.run(state)
        assert paused, "the server kept reading from a client that does not read"
        assert buffered < 1_000_000, f"{buffered} bytes buffered for a client that does not read"
        # The client reads now: every request it sent is answered, in order.
        c.sock.setblocking(True)
        c.sock.settimeout(10)
        if pos < len(payload):
            threading.Thread(target=lambda: c.sock.sendall(view[pos:]), daemon=True).start()
        for _ in range(n):
            status, _, body = c.read_response()
            assert status == 200 and body.startswith(b"# HELP")


def test_stop_finishes_in_flight_requests_and_closes_idle_connections(repo):
    s = ServerThread(repo[0])
    try:
        idle = Conn(s.port)
        idle.send(request("GET", "/v2/health/live"))
        assert idle.read_response()[0] == 200
        busy = Conn(s.port)
        x = rows(1)
        busy.send(infer_request(x, model="delayed"))
        stats = s.run(lambda: s.repository.lookup("delayed", "").stats)
        deadline = time.monotonic() + 5
        while s.run(lambda: stats.pending()) == 0 and time.monotonic() < deadline:
            time.sleep(0.005)  # until the request is queued in the core
        fut = asyncio.run_coroutine_threadsafe(s.transport.stop(5.0), s.loop)
        assert idle.closed_by_server(timeout=2)
        status, headers, body = busy.read_response()
        assert status == 200 and headers["connection"] == "close"
        np.testing.assert_allclose(output_of(status, headers, body), mlp_reference(x, repo[1]), rtol=1e-5, atol=1e-5)
        assert busy.closed_by_server(timeout=3)
        fut.result(10)
        with pytest.raises(OSError):
            Conn(s.port, timeout=1).send(request("GET", "/v2/health/live"))
        idle.close()
        busy.close()
    finally:
        s.close()


def _closed_within(sock, seconds: float) -> bool:
    """True when the server closes (or resets) the connection within `seconds`."""
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_idle_and_stalled_connections_are_closed(repo):
    s = ServerThread(repo[0], keepalive_timeout_secs=1.0, request_timeout_secs=1.0)
    with contextlib.ExitStack() as sockets:

        def connect() -> socket.socket:
            return sockets.enter_context(socket.create_connection(("127.0.0.1", s.port)))

        try:
            idle = connect()
            answered = connect()
            answered.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answered.recv(65536).startswith(b"HTTP/1.1 200")
            stalled = connect()
            stalled.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            for sock in (idle, answered, stalled):
                assert _closed_within(sock, 5.0)
            # a busy keep-alive connection is not closed while it keeps talking (a request
            # every 0.2 s, well inside the 1 s idle timeout even on a loaded machine)
            busy = connect()
            for _ in range(10):
                busy.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                assert busy.recv(65536).startswith(b"HTTP/1.1 200")
                time.sleep(0.2)
        finally:
            s.close()
