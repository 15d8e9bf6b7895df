"""The gRPC server's HTTP/2 layer from a hostile or broken peer (RFC 9113, RFC 7541), over real
sockets against a real server process, with `parity.testing.h2client` as the peer.

Two kinds of tests, and the transport (`--grpc-transport`) is a fixture parameter:

- robustness, for every transport (`srv`): whatever a peer sends, the server answers it, sends
  a GOAWAY or closes within a short time (the connection never hangs), its memory stays bounded,
  other connections keep being served, and afterwards a fresh tritonclient call works (checked
  when every test ends, in the fixture's teardown);
- exact error codes, RFC 9113's MUSTs (`strict`): for the transports in H2_EXACT_TRANSPORTS,
  "fast" unless the environment variable PARITY_H2_EXACT_TRANSPORTS says otherwise (set it to
  "fast,grpcio" to hold the reference transport to the same rules: GRPCIO_DEVIATIONS lists where
  grpcio 1.85 answers differently).

A frame-sequence fuzzer (hypothesis, derandomized) closes the module.
"""

from __future__ import annotations

import os
import random
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from parity._proto.inference import grpc_service_pb2 as pb
from parity.testing.h2client import (
    MAX_WINDOW,
    PREFACE,
    ConnectionClosed,
    ErrorCode,
    Flag,
    FrameType,
    H2Client,
    ServerViolation,
    Setting,
    encode_frame,
    error_name,
    grpc_message,
    padded,
    priority_payload,
    rst_stream_payload,
    settings_payload,
    window_update_payload,
)
from parity.testing.models import mlp_config, mlp_reference, save_onnx_graph, write_config, write_mlp_onnx
from parity.testing.server import ServerProcess

SIZES = [16, 32, 32, 4]
MAX_BATCH = 8
MAX_BODY = 4 << 20  # the server's message limit in this module: above the fast transport's 1 MiB stream window
WIDE = 4096  # the "wide" model's outputs per row: 16 KiB of FP32 for a 4-byte input
TRANSPORTS = ("fast", "grpcio")
H2_EXACT_TRANSPORTS = tuple(t for t in os.environ.get("PARITY_H2_EXACT_TRANSPORTS", "fast").split(",") if t)
FUZZ_EXAMPLES = int(os.environ.get("PARITY_H2_FUZZ_EXAMPLES", "150"))  # more for a longer hunt; CI keeps 150
MiB = 1 << 20

# Where grpcio (1.85, grpc core's chttp2) answers other than RFC 9113 (or the gRPC spec) asks; found
# by running the strict tests with PARITY_H2_EXACT_TRANSPORTS=fast,grpcio.  The robustness tests
# grpcio fails (the slow reader, rapid reset) therefore run as strict tests: on the fast transport
# in CI, on grpcio only when asked.
GRPCIO_DEVIATIONS: dict[str, str] = {
    "connection errors": "closed without a GOAWAY: bad prefaces, frames over SETTINGS_MAX_FRAME_SIZE, every "
    "SETTINGS error, PING and WINDOW_UPDATE and RST_STREAM of the wrong length, WINDOW_UPDATE 0 on the connection, "
    "HEADERS padding too long, CONTINUATION without HEADERS or interrupted header blocks, HPACK errors (but a "
    "Huffman string padded with zeros is accepted)",
    "ignored errors": "the connection goes on as if nothing happened after: PING on a stream (answered), "
    "WINDOW_UPDATE overflow (connection and stream), WINDOW_UPDATE, DATA or RST_STREAM on an idle stream or on "
    "stream 0, HEADERS on an even stream, on stream 0, or on a lower or reused stream id, PRIORITY of length != 5 "
    "or on stream 0, PUSH_PROMISE from a client, DATA after END_STREAM or on a closed stream, DATA with padding "
    "as long as the frame",
    "window_update_zero_on_stream": "the stream ends with grpc-status 14 and RST_STREAM NO_ERROR, or the connection closes",
    "grpc-message": "a client's GOAWAY debug data is copied raw (not percent-encoded) into the grpc-message of the calls it ends",
    "test_a_call_over_padded_frames": "padded DATA is a stream error (RST_STREAM PROTOCOL_ERROR, chttp2's "
    "'unsupported data flags'); padded HEADERS are not unpadded (grpc-status 13 'Failed parsing HTTP/2', or the "
    "connection closed)",
    "test_data_beyond_the_flow_control_window": "windows of 4 MiB, more than this module's message limit: the test cannot overrun them",
    "test_streams_over_max_concurrent_streams_are_refused": "no SETTINGS_MAX_CONCURRENT_STREAMS (unlimited)",
    "test_a_content_type_that_is_not_grpc_is_415": "no content-type check: application/json is served as gRPC",
    "test_continuation_flood_is_cut_short": "cut short, but by a close without GOAWAY",
    "test_a_slow_reader_neither_grows_memory_nor_stalls_others": "while one client that does not read has tens "
    "of thousands of calls in flight (grpcio sets no SETTINGS_MAX_CONCURRENT_STREAMS), calls on other connections "
    "fail with CANCELLED (grpc core's server-wide cap on pending calls), and the RSS grows by 190-230 MiB: "
    "fails more often than not",
    "test_rapid_reset": "calls on other connections fail with CANCELLED while a rapid-reset flood runs "
    "(grpc core's server-wide cap on pending calls): fails about half the time",
}


# -- the servers ----------------------------------------------------------------------------------------


def build_repository(root: Path) -> list:
    weights = write_mlp_onnx(root / "mlp" / "1" / "model.onnx", SIZES)
    write_config(root / "mlp", mlp_config(SIZES, max_batch_size=MAX_BATCH))
    write_wide_onnx(root / "wide" / "1" / "model.onnx", WIDE)
    write_config(
        root / "wide",
        {
            "platform": "onnxruntime_onnx",
            "max_batch_size": MAX_BATCH,
            "inputs": [{"name": "X", "datatype": "FP32", "shape": [1]}],
            "outputs": [{"name": "Y", "datatype": "FP32", "shape": [WIDE]}],
            "dynamic_batching": {},
        },
    )
    return weights


def write_wide_onnx(path: Path, width: int) -> None:
    """Y = Expand(X, [1, width]): a [batch, 1] input becomes a [batch, width] output (big answers
    to small questions, for the slow reader)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Expand", ["X", "shape"], ["Y"])],
        "wide",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(np.array([1, width], dtype=np.int64), "shape")],
    )
    save_onnx_graph(graph, path)


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes (VmRSS from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, SIZES[0])).astype(np.float32)


def infer_request(x: np.ndarray, model: str = "mlp", name: str = "INPUT0") -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=list(x.shape))],
        raw_input_contents=[x.astype("<f4").tobytes()],
    )


def grpc_client(url: str) -> grpcclient.InferenceServerClient:
    # a local subchannel pool: a new connection of its own, never one another client left behind
    return grpcclient.InferenceServerClient(
        url,
        channel_args=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", 64 * MiB),
            ("grpc.max_send_message_length", 64 * MiB),
        ],
    )


@dataclass(repr=False)
class Served:
    """One running server under one transport."""

    transport: str
    server: ServerProcess
    weights: list
    deaths: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.grpc_url

    def __repr__(self) -> str:
        return f"Served({self.transport!r}, {self.url})"

    @property
    def pid(self) -> int:
        return self.server.proc.pid

    @property
    def strict(self) -> bool:
        return self.transport in H2_EXACT_TRANSPORTS

    def rss(self) -> int:
        return rss(self.pid)

    def h2(self, **kw) -> H2Client:
        return H2Client.connect(self.url, **kw)

    def alive(self) -> bool:
        return self.server.proc.poll() is None

    def normal_call(self, client: grpcclient.InferenceServerClient | None = None, timeout: float = 10.0, seed: int = 0) -> None:
        """A tritonclient.grpc ModelInfer on "mlp" (on a new connection unless `client` is given)
        that must succeed, with the right answer."""
        assert self.alive(), (
            f"the {self.transport} server died (exit {self.server.proc.returncode}):\n{self.server.output()[-4000:]}"
        )
        own = client is None
        c = grpc_client(self.url) if own else client
        try:
            x = rows(2, seed)
            inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            result = c.infer("mlp", [inp], client_timeout=timeout)
            np.testing.assert_allclose(result.as_numpy("OUTPUT0"), mlp_reference(x, self.weights), rtol=1e-4, atol=1e-5)
        finally:
            if own:
                c.close()


def wait_grpc_ready(server: ServerProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode} before it was ready:\n{server.output()}")
        client = grpc_client(server.grpc_url)
        try:
            if client.is_server_ready(client_timeout=1):
                return
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
        finally:
            client.close()
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"gRPC ServerReady not true after {timeout}s (last error: {last}):\n{server.output()}")


class Servers:
    """One server per transport, started on first use and restarted if a test killed it (the
    death is recorded and fails that test's teardown)."""

    def __init__(self, root: Path, weights: list):
        self.root, self.weights = root, weights
        self.running: dict[str, Served] = {}
        self.finished: list[tuple[str, int, str]] = []

    def get(self, transport: str) -> Served:
        s = self.running.get(transport)
        if s is not None and s.alive():
            return s
        if s is not None:  # died: keep its output, start another
            s.server.stop()
            self.finished.append((transport, s.server.returncode, s.server.output()))
            s.server.__exit__(None, None, None)
        args = ("--grpc-transport", transport, "--max-body-bytes", str(MAX_BODY), "--repository-poll-secs", "3600")
        server = ServerProcess(self.root, *args, wait_ready=False)
        server.start()
        try:
            wait_grpc_ready(server)
        except BaseException:
            server.stop()
            raise
        s = self.running[transport] = Served(transport, server, self.weights)
        return s

    def stop_all(self) -> list[tuple[str, int, str]]:
        for t, s in self.running.items():
            rc = s.server.stop()
            self.finished.append((t, rc, s.server.output()))
            s.server.__exit__(None, None, None)
        self.running.clear()
        return self.finished


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    weights = build_repository(root)
    pool = Servers(root, weights)
    yield pool
    problems = []
    for transport, rc, output in pool.stop_all():
        if rc != 0:
            problems.append(f"the {transport} server exited with {rc}:\n{output[-6000:]}")
        elif "Traceback" in output and transport in H2_EXACT_TRANSPORTS:  # grpcio logs its own, from hostile peers
            problems.append(f"the {transport} server logged a traceback:\n{output[-6000:]}")
    assert not problems, "\n\n".join(problems)


def _checked(servers: Servers, transport: str):
    s = servers.get(transport)
    yield s
    # every test leaves the server alive and serving
    if not s.alive():
        servers.get(transport)  # restart for the next tests
        raise AssertionError(
            f"the {transport} server died during the test (exit {s.server.proc.returncode}):\n{s.server.output()[-6000:]}"
        )
    s.normal_call()


@pytest.fixture(params=TRANSPORTS)
def srv(request, servers):
    """A server for each transport: the robustness tests."""
    yield from _checked(servers, request.param)


@pytest.fixture(params=H2_EXACT_TRANSPORTS)
def strict(request, servers):
    """A server for each transport held to RFC 9113's exact error codes."""
    yield from _checked(servers, request.param)


def peak_rss(srv: Served, seconds: float) -> int:
    """The server's largest RSS sampled over `seconds`."""
    peak, end = srv.rss(), time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
        peak = max(peak, srv.rss())
    return peak


def wait_serving(srv: Served, timeout: float) -> float:
    """Seconds until a fresh normal call succeeds (AssertionError after `timeout`)."""
    t0 = time.monotonic()
    while True:
        try:
            srv.normal_call(timeout=max(0.5, timeout - (time.monotonic() - t0)))
            return time.monotonic() - t0
        except Exception as e:  # noqa: BLE001
            if time.monotonic() - t0 > timeout or not srv.alive():
                raise AssertionError(f"no successful call within {timeout}s: {e}") from None
            time.sleep(0.1)


# -- helpers --------------------------------------------------------------------------------------------


def infer_headers(c: H2Client, **kw) -> list[tuple[str, str]]:
    return c.grpc_headers("ModelInfer", **kw)


def open_stream(c: H2Client, sid: int = 1) -> int:
    """Open a stream with ModelInfer request headers and no END_STREAM: it waits for its DATA."""
    c.send_headers(sid, infer_headers(c))
    return sid


def check_infer_result(result, weights, x) -> None:
    assert result.status == 200 and result.grpc_status == 0, str(result)
    (msg,) = result.messages
    reply = pb.ModelInferResponse.FromString(msg)
    out = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(list(reply.outputs[0].shape))
    np.testing.assert_allclose(out, mlp_reference(x, weights), rtol=1e-4, atol=1e-5)


def goaway_or_close(c: H2Client, timeout: float = 3.0) -> str:
    """'GOAWAY <code>' or 'closed': what the connection ended with (TimeoutError if it did not)."""
    code = c.wait_goaway_or_close(timeout)
    return "closed" if code is None else f"GOAWAY {error_name(code)}"


def observe(c: H2Client, timeout: float = 3.0) -> str:
    """What the server did with what a test sent, without knowing what it should do: it must, within
    `timeout`, either end the connection or answer a PING sent after it.  Returns a description
    ('GOAWAY PROTOCOL_ERROR', 'closed', 'alive; RST_STREAM 1 PROTOCOL_ERROR', ...); AssertionError
    if the connection hung."""
    marker = os.urandom(8)
    try:
        c.ping(marker)
    except ConnectionClosed:
        pass
    deadline = time.monotonic() + timeout
    try:
        while True:
            f = c.read_frame(max(0.0, deadline - time.monotonic()))
            if f.type == FrameType.GOAWAY and f.error_code != ErrorCode.NO_ERROR:
                return f"GOAWAY {error_name(f.error_code)}"
            if f.type == FrameType.PING and f.has(Flag.ACK) and f.payload == marker:
                resets = [
                    f"RST_STREAM {g.stream_id} {error_name(g.error_code)}" for g in c.received if g.type == FrameType.RST_STREAM
                ]
                return "; ".join(["alive", *resets])
    except ConnectionClosed as e:
        return "closed" if e.error_code is None else f"GOAWAY {error_name(e.error_code)}"
    except ServerViolation as e:  # not a hang; what the strict tests make of it is theirs to say
        return f"answered outside HTTP/2: {e}"
    except TimeoutError:
        raise AssertionError(
            f"the connection hung: no GOAWAY, no close, no PING ACK within {timeout}s; frames: {c.describe()}"
        ) from None


# -- hostile cases with an exact expected outcome ---------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """`goaway`: a connection error with one of `codes` (None in codes: a close without GOAWAY is
    acceptable too); `rst`: RST_STREAM on `stream_id` with one of `codes`, then the connection
    still answers a PING; `rst_or_goaway`: either of those."""

    kind: str
    codes: tuple
    stream_id: int = 0


def goaway(*codes) -> Expect:
    return Expect("goaway", codes)


def rst(stream_id: int, *codes) -> Expect:
    return Expect("rst", codes, stream_id)


P, F, FC, C, SC = (ErrorCode.PROTOCOL_ERROR, ErrorCode.FRAME_SIZE_ERROR, ErrorCode.FLOW_CONTROL_ERROR,
                   ErrorCode.COMPRESSION_ERROR, ErrorCode.STREAM_CLOSED)  # fmt: skip


def _bad_preface(data: bytes):
    def case(c: H2Client) -> Expect:
        c.send(data)
        return goaway(P, None)

    case.handshake = False
    return case


def _frame(type, flags=0, sid=0, payload=b"", *, opened: int | None = None, expect: Expect):
    def case(c: H2Client) -> Expect:
        if opened is not None:
            open_stream(c, opened)
        c.send_frame(type, flags, sid, payload)
        return expect

    return case


def _headers_over_max_frame_size(c: H2Client) -> Expect:
    # a field block that is valid HPACK and exactly one byte larger than the server accepts:
    # request headers, a long literal, then as many indexed "accept-encoding: gzip, deflate" as fit
    target = c.max_frame_size + 1
    block = c.encode_headers(infer_headers(c) + [("x-fill", "a" * (target - 1024))], huffman=False)
    assert len(block) <= target
    c.send_frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 1, block + b"\x90" * (target - len(block)))
    return goaway(F)


_headers_over_max_frame_size.expect = goaway(F)  # (also when the server stops reading before the frame is all sent)


def _unknown_frame_over_max_frame_size(c: H2Client) -> Expect:
    c.send_frame(0xEE, 0, 0, b"\0" * (c.max_frame_size + 1))
    return goaway(F)


_unknown_frame_over_max_frame_size.expect = goaway(F)  # (also when the server stops reading before the frame is all sent)


def _settings_over_max_frame_size(c: H2Client) -> Expect:
    n = c.max_frame_size + 1
    n += -n % 6
    c.send_frame(FrameType.SETTINGS, 0, 0, settings_payload([(0xF0, 1)] * (n // 6)))
    return goaway(F)


_settings_over_max_frame_size.expect = goaway(F)  # (also when the server stops reading before the frame is all sent)


def _first_frame_not_settings(c: H2Client) -> Expect:
    c.send(PREFACE + encode_frame(FrameType.PING, 0, 0, b"\0" * 8))
    return goaway(P, None)


_first_frame_not_settings.handshake = False


def _settings(pairs, expect: Expect):
    return _frame(FrameType.SETTINGS, 0, 0, settings_payload(pairs), expect=expect)


def _after_call(sid: int, then_sid: int, expect: Expect):
    """A whole call on `sid`, then HEADERS on `then_sid` (reuse or going back)."""

    def case(c: H2Client) -> Expect:
        r = c.unary("ServerLive", pb.ServerLiveRequest(), stream_id=sid)
        assert r.grpc_status == 0, str(r)
        c.send_headers(then_sid, c.grpc_headers("ServerLive"), end_stream=True)
        return expect

    return case


def _headers_on(sid: int, expect: Expect):
    def case(c: H2Client) -> Expect:
        c.send_headers(sid, c.grpc_headers("ServerLive"), end_stream=True)
        return expect

    return case


def _continuation_without_headers(c: H2Client) -> Expect:
    c.send_frame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, c.encode_headers(infer_headers(c)))
    return goaway(P)


def _interrupted_block(interruption: Callable[[H2Client], None]):
    def case(c: H2Client) -> Expect:
        block = c.encode_headers(infer_headers(c))
        c.send_frame(FrameType.HEADERS, 0, 1, block[:5])
        interruption(c)
        c.send_frame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, block[5:])
        return goaway(P)

    return case


def _garbage_hpack(block: bytes):
    def case(c: H2Client) -> Expect:
        c.send_frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 1, block)
        return goaway(C)

    return case


def _data_pad_too_long(c: H2Client) -> Expect:
    open_stream(c, 1)
    c.send_frame(FrameType.DATA, Flag.PADDED, 1, bytes([6]) + b"abcde")  # pad length 6 = the frame's payload length
    return goaway(P)


def _headers_pad_too_long(c: H2Client) -> Expect:
    block = c.encode_headers(infer_headers(c))
    c.send_frame(FrameType.HEADERS, Flag.PADDED | Flag.END_HEADERS, 1, bytes([len(block) + 1]) + block)
    return goaway(P)


def _data_after_end_stream(c: H2Client) -> Expect:
    # the request complete (END_STREAM) and more DATA right behind it, in one write: the stream is
    # half-closed (remote) for the server (or closed, if it answered already); DATA on a stream in
    # neither "open" nor "half-closed (local)" is a stream error STREAM_CLOSED (RFC 9113 6.1)
    block = c.encode_headers(infer_headers(c))
    body = grpc_message(infer_request(rows(1)).SerializeToString())
    c.send(
        encode_frame(FrameType.HEADERS, Flag.END_HEADERS, 1, block)
        + encode_frame(FrameType.DATA, Flag.END_STREAM, 1, body)
        + encode_frame(FrameType.DATA, 0, 1, grpc_message(b""))
    )
    return Expect("rst_or_goaway", (SC,), 1)


def _data_on_closed_stream(c: H2Client) -> Expect:
    # a whole call, answered: the stream is closed; DATA on it is a stream error STREAM_CLOSED
    # (RFC 9113 6.1), which 5.1 lets the server make a connection error
    r = c.unary("ServerLive", pb.ServerLiveRequest(), stream_id=1)
    assert r.grpc_status == 0, str(r)
    c.send_frame(FrameType.DATA, 0, 1, grpc_message(b""))
    return Expect("rst_or_goaway", (SC,), 1)


def _push_promise(c: H2Client) -> Expect:
    open_stream(c, 1)
    block = c.encode_headers(c.grpc_headers("ServerLive"))
    c.send_frame(FrameType.PUSH_PROMISE, Flag.END_HEADERS, 1, struct.pack(">I", 2) + block)
    return goaway(P)


def _window_update_zero_on_stream(c: H2Client) -> Expect:
    open_stream(c, 1)
    c.window_update(1, 0)
    return rst(1, P)


def _window_overflow_on_stream(c: H2Client) -> Expect:
    open_stream(c, 1)
    c.window_update(1, MAX_WINDOW)
    return rst(1, FC)


def _rst_stream_bad_length(n: int):
    def case(c: H2Client) -> Expect:
        open_stream(c, 1)
        c.send_frame(FrameType.RST_STREAM, 0, 1, b"\0" * n)
        return goaway(F)

    return case


CASES: dict[str, Callable[[H2Client], Expect]] = {
    # the connection preface
    "preface_http1": _bad_preface(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "preface_almost": _bad_preface(b"PRI * HTTP/2.0\r\n\r\nXM\r\n\r\n" + encode_frame(FrameType.SETTINGS)),
    "preface_garbage": _bad_preface(bytes(range(256)) * 4),
    "first_frame_not_settings": _first_frame_not_settings,
    # frame size
    "headers_over_max_frame_size": _headers_over_max_frame_size,
    "unknown_frame_over_max_frame_size": _unknown_frame_over_max_frame_size,
    "settings_over_max_frame_size": _settings_over_max_frame_size,
    # SETTINGS
    "settings_length_7": _frame(FrameType.SETTINGS, 0, 0, b"\0\x03\0\0\0\x10\0", expect=goaway(F)),
    "settings_length_5": _frame(FrameType.SETTINGS, 0, 0, b"\0\x03\0\0\0", expect=goaway(F)),
    "settings_on_stream": _frame(FrameType.SETTINGS, 0, 1, b"", expect=goaway(P)),
    "settings_ack_with_payload": _frame(FrameType.SETTINGS, Flag.ACK, 0, settings_payload({3: 1}), expect=goaway(F)),
    "settings_enable_push_2": _settings({Setting.ENABLE_PUSH: 2}, goaway(P)),
    "settings_initial_window_2^31": _settings({Setting.INITIAL_WINDOW_SIZE: 2**31}, goaway(FC)),
    "settings_initial_window_2^32-1": _settings({Setting.INITIAL_WINDOW_SIZE: 2**32 - 1}, goaway(FC)),
    "settings_max_frame_size_16383": _settings({Setting.MAX_FRAME_SIZE: 16383}, goaway(P)),
    "settings_max_frame_size_2^24": _settings({Setting.MAX_FRAME_SIZE: 2**24}, goaway(P)),
    "settings_max_frame_size_0": _settings({Setting.MAX_FRAME_SIZE: 0}, goaway(P)),
    # PING
    "ping_length_7": _frame(FrameType.PING, 0, 0, b"\0" * 7, expect=goaway(F)),
    "ping_length_9": _frame(FrameType.PING, 0, 0, b"\0" * 9, expect=goaway(F)),
    "ping_length_0": _frame(FrameType.PING, 0, 0, b"", expect=goaway(F)),
    "ping_on_stream": _frame(FrameType.PING, 0, 1, b"\0" * 8, expect=goaway(P)),
    # WINDOW_UPDATE
    "window_update_length_3": _frame(FrameType.WINDOW_UPDATE, 0, 0, b"\0\0\x01", expect=goaway(F)),
    "window_update_length_5": _frame(FrameType.WINDOW_UPDATE, 0, 0, b"\0\0\0\x01\0", expect=goaway(F)),
    "window_update_zero_on_connection": _frame(FrameType.WINDOW_UPDATE, 0, 0, window_update_payload(0), expect=goaway(P)),
    "window_update_zero_on_stream": _window_update_zero_on_stream,
    "window_overflow_on_connection": _frame(FrameType.WINDOW_UPDATE, 0, 0, window_update_payload(MAX_WINDOW), expect=goaway(FC)),
    "window_overflow_on_stream": _window_overflow_on_stream,
    "window_update_on_idle_stream": _frame(FrameType.WINDOW_UPDATE, 0, 3, window_update_payload(1), expect=goaway(P)),
    # HEADERS and stream ids
    "headers_on_even_stream": _headers_on(2, goaway(P)),
    "headers_on_stream_0": _headers_on(0, goaway(P)),
    "headers_on_lower_stream_id": _after_call(5, 3, goaway(P, SC)),
    "headers_on_reused_stream_id": _after_call(1, 1, goaway(P, SC)),
    "headers_pad_too_long": _headers_pad_too_long,
    # CONTINUATION
    "continuation_without_headers": _continuation_without_headers,
    "ping_inside_header_block": _interrupted_block(lambda c: c.ping(b"\0" * 8)),
    "data_inside_header_block": _interrupted_block(lambda c: c.send_frame(FrameType.DATA, 0, 1, grpc_message(b""))),
    "headers_inside_header_block": _interrupted_block(lambda c: c.send_frame(FrameType.HEADERS, Flag.END_HEADERS, 3, b"\x83")),
    "continuation_on_another_stream": _interrupted_block(lambda c: c.send_frame(FrameType.CONTINUATION, 0, 3, b"")),
    "unknown_frame_inside_header_block": _interrupted_block(lambda c: c.send_frame(0xEE, 0, 1, b"xyz")),
    # HPACK
    "hpack_index_0": _garbage_hpack(b"\x80"),
    "hpack_index_out_of_range": _garbage_hpack(b"\xfe"),
    "hpack_integer_overflow": _garbage_hpack(b"\xff" + b"\xff" * 10 + b"\x7f"),
    "hpack_truncated_literal": _garbage_hpack(b"\x00\x05ab"),
    "hpack_table_size_over_setting": _garbage_hpack(b"\x3f\xe1\xff\x03"),
    "hpack_bad_huffman": _garbage_hpack(b"\x00\x81\x00\x81\xff"),  # name is a Huffman EOS-less 0x00 byte
    "hpack_huffman_padding_not_eos": _garbage_hpack(b"\x40\x82\xff\xff\x01a"),
    # random bytes that do not decode (hpack.Decoder agrees): an unfinished Huffman string, a truncated block
    "hpack_garbage_2": _garbage_hpack(random.Random(2).randbytes(64)),
    "hpack_garbage_5": _garbage_hpack(random.Random(5).randbytes(64)),
    # DATA
    "data_on_stream_0": _frame(FrameType.DATA, 0, 0, grpc_message(b""), expect=goaway(P)),
    "data_on_idle_stream": _frame(FrameType.DATA, Flag.END_STREAM, 7, grpc_message(b""), expect=goaway(P)),
    "data_pad_too_long": _data_pad_too_long,
    "data_pad_length_only_too_long": _frame(FrameType.DATA, Flag.PADDED, 1, bytes([1]), opened=1, expect=goaway(P)),
    "data_after_end_stream": _data_after_end_stream,
    "data_on_closed_stream": _data_on_closed_stream,
    # RST_STREAM
    "rst_stream_length_3": _rst_stream_bad_length(3),
    "rst_stream_length_5": _rst_stream_bad_length(5),
    "rst_stream_on_stream_0": _frame(FrameType.RST_STREAM, 0, 0, rst_stream_payload(ErrorCode.CANCEL), expect=goaway(P)),
    "rst_stream_on_idle_stream": _frame(FrameType.RST_STREAM, 0, 5, rst_stream_payload(ErrorCode.CANCEL), expect=goaway(P)),
    # PRIORITY
    "priority_length_4": _frame(FrameType.PRIORITY, 0, 1, b"\0\0\0\0", expect=rst(1, F)),
    "priority_length_6": _frame(FrameType.PRIORITY, 0, 1, priority_payload(0, 16) + b"\0", expect=rst(1, F)),
    "priority_on_stream_0": _frame(FrameType.PRIORITY, 0, 0, priority_payload(0, 16), expect=goaway(P)),
    # PUSH_PROMISE
    "push_promise_from_client": _push_promise,
}


def run_case(srv: Served, name: str) -> tuple[H2Client, Expect]:
    case = CASES[name]
    c = H2Client.connect(srv.url, handshake=getattr(case, "handshake", True), timeout=5.0)
    try:
        return c, case(c)
    except ConnectionClosed:  # it went away while we were still sending: judged by what the case declared
        return c, getattr(case, "expect", None)
    except BaseException:
        c.close()
        raise


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_frames_neither_hang_nor_hurt_the_server(srv, name):
    """Every case on every transport: the connection ends or answers a PING within 3 s, the server
    lives and serves (the fixture's teardown makes a fresh call)."""
    c, _ = run_case(srv, name)
    with c:
        print(f"{srv.transport} {name}: {observe(c)}")


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_frames_get_the_error_rfc_9113_asks_for(strict, name):
    c, expect = run_case(strict, name)
    with c:
        _judge(c, expect, name)


def _judge(c: H2Client, expect: Expect | None, name: str) -> None:
    if expect is None:  # the server closed while a case that declared nothing was still sending
        code = c.goaway.error_code if c.goaway is not None else None
        raise AssertionError(
            f"{name}: the server closed the connection before the case was sent ({error_name(code)}); frames: {c.describe()}"
        )
    want = " or ".join("close" if k is None else error_name(k) for k in expect.codes)
    if expect.kind == "goaway":
        try:
            code = c.wait_goaway_or_close(3.0)
        except TimeoutError:
            raise AssertionError(
                f"{name}: wanted GOAWAY {want}, got no GOAWAY and no close within 3 s; frames: {c.describe()}"
            ) from None
        if code is None:
            assert None in expect.codes, f"{name}: wanted GOAWAY {want}, the server closed without one; frames: {c.describe()}"
        else:
            assert code in expect.codes, f"{name}: wanted GOAWAY {want}, got GOAWAY {error_name(code)}; frames: {c.describe()}"
        return
    st = c.stream(expect.stream_id)
    try:
        c.read_until(lambda f: st.reset_code is not None or (f.type == FrameType.GOAWAY and f.error_code != 0), 3.0)
    except TimeoutError:
        raise AssertionError(
            f"{name}: wanted RST_STREAM {expect.stream_id} {want}, got nothing within 3 s; frames: {c.describe()}"
        ) from None
    except ConnectionClosed as e:
        if expect.kind == "rst_or_goaway" and e.error_code in expect.codes:
            return
        raise AssertionError(
            f"{name}: wanted RST_STREAM {expect.stream_id} {want} (a stream error), the connection ended: {e}; frames: {c.describe()}"
        ) from None
    if st.reset_code is None:  # a GOAWAY came
        if expect.kind == "rst_or_goaway" and c.goaway.error_code in expect.codes:
            return
        raise AssertionError(
            f"{name}: wanted RST_STREAM {expect.stream_id} {want} (a stream error), got {c.goaway}; frames: {c.describe()}"
        )
    assert st.reset_code in expect.codes, (
        f"{name}: wanted RST_STREAM {expect.stream_id} {want}, got {error_name(st.reset_code)}; frames: {c.describe()}"
    )
    # a stream error leaves the connection working
    try:
        c.ping_pong(timeout=3.0)
    except (TimeoutError, ConnectionClosed) as e:
        raise AssertionError(
            f"{name}: after RST_STREAM the connection should go on, but: {e!r}; frames: {c.describe()}"
        ) from None


# -- what must work ---------------------------------------------------------------------------------------


def test_settings_are_acked_and_unknown_settings_ignored(srv):
    with srv.h2() as c:
        c.read_until(lambda f: c.settings_acks >= 1, 3.0)  # the handshake's SETTINGS
        c.send_settings([(0x4242, 7), (Setting.MAX_HEADER_LIST_SIZE, 1 << 16), (0x4242, 9)])
        c.read_until(lambda f: c.settings_acks >= 2, 3.0)
        c.send_settings([])  # empty SETTINGS are still ACKed
        c.read_until(lambda f: c.settings_acks >= 3, 3.0)
        c.ping_pong(timeout=3.0)


def test_answers_use_the_dynamic_table_and_respect_a_smaller_one(strict):
    """The answers' fixed fields enter the client's HPACK dynamic table once, then travel as
    one-byte references; a client that shrinks its table gets a size update and literals."""
    from parity.serving.transport.grpc_fast import RESPONSE_HEAD, TRAILERS_OK

    def blocks(c, sid):
        return [f.payload for f in c.received if f.type == FrameType.HEADERS and f.stream_id == sid]

    with strict.h2() as c:
        for i in range(3):
            x = rows(2, seed=30 + i)
            result = c.unary("ModelInfer", infer_request(x))
            check_infer_result(result, strict.weights, x)
            head, trailers = blocks(c, result.stream_id)
            assert result.headers[:2] == [(":status", "200"), ("content-type", "application/grpc")]
            assert result.trailers == [("grpc-status", "0")]
            if i:  # entered by the first answer: one byte per field now
                assert len(head) == 3 and len(trailers) == 1, (head, trailers)
        acks = c.settings_acks
        c.send_settings([(Setting.HEADER_TABLE_SIZE, 0)])
        c.read_until(lambda f: c.settings_acks > acks, 3.0)
        for i in range(2):
            x = rows(1, seed=40 + i)
            result = c.unary("ModelInfer", infer_request(x))
            check_infer_result(result, strict.weights, x)
            head, trailers = blocks(c, result.stream_id)
            if i == 0:
                assert head == b"\x20" + RESPONSE_HEAD  # a size update to 0 first, then literals
            else:
                assert head == RESPONSE_HEAD
            assert trailers == TRAILERS_OK
        assert c.goaway is None


def test_ping_is_answered_with_the_same_bytes(srv):
    with srv.h2() as c:
        for data in (b"\0" * 8, b"\xff" * 8, os.urandom(8)):
            ack = c.ping_pong(data, timeout=3.0)
            assert ack.stream_id == 0 and ack.flags == Flag.ACK and ack.payload == data
        # a PING ACK we never asked for is not answered and not an error
        c.ping(b"unasked!", ack=True)
        c.ping_pong(b"after!!!", timeout=3.0)
        assert not [f for f in c.received if f.type == FrameType.PING and f.payload == b"unasked!"]


def test_unknown_frame_types_are_ignored(srv):
    x = rows(3, seed=4)
    with srv.h2() as c:
        for t in (0x0A, 0x10, 0x7F, 0xEE, 0xFF):
            c.send_frame(t, 0xFF, 0, os.urandom(t % 32))
            c.send_frame(t, 0, 1, b"")  # on a stream not yet opened
        c.ping_pong(timeout=3.0)
        sid = open_stream(c, 1)
        c.send_frame(0xEE, 0x01, sid, b"stream ext")  # on an open stream, between its HEADERS and DATA
        c.send_data(sid, grpc_message(infer_request(x).SerializeToString()), end_stream=True)
        check_infer_result(c.wait_stream(sid, 10.0), srv.weights, x)
        assert c.goaway is None


def test_a_call_over_continuations_and_priority(srv):
    """Field blocks split over CONTINUATION frames (one of them empty), HEADERS with the PRIORITY
    flag, PRIORITY frames: all legal, the calls work."""
    with srv.h2() as c:
        for i, fragment_size in enumerate((7, 40, 1000)):
            x = rows(2, seed=i)
            sid = c.new_stream_id()
            hdrs = infer_headers(c, metadata=[(f"x-meta-{k}", "v" * 60) for k in range(10)])
            c.send_headers(sid, hdrs, fragment_size=fragment_size, priority=priority_payload(0, 200, exclusive=bool(i % 2)))
            c.send_data(sid, grpc_message(infer_request(x).SerializeToString()), end_stream=True, frame_size=40)
            check_infer_result(c.wait_stream(sid, 10.0), srv.weights, x)
        # an empty HEADERS fragment and an empty CONTINUATION among the others
        x = rows(1, seed=9)
        sid = c.new_stream_id()
        block = c.encode_headers(infer_headers(c))
        c.send_frame(FrameType.HEADERS, Flag.PRIORITY, sid, priority_payload(0, 1))
        c.send_frame(FrameType.CONTINUATION, 0, sid, block[:3])
        c.send_frame(FrameType.CONTINUATION, 0, sid, b"")
        c.send_frame(FrameType.CONTINUATION, Flag.END_HEADERS, sid, block[3:])
        c.send_frame(FrameType.PRIORITY, 0, sid, priority_payload(0, 256))  # reprioritising an open stream
        c.send_data(sid, grpc_message(infer_request(x).SerializeToString()), end_stream=True)
        check_infer_result(c.wait_stream(sid, 10.0), srv.weights, x)
        # PRIORITY on an idle stream opens nothing: a later, higher stream id still works
        c.send_frame(FrameType.PRIORITY, 0, sid + 2, priority_payload(0, 16))
        r = c.unary("ServerLive", pb.ServerLiveRequest(), stream_id=sid + 4)
        assert r.grpc_status == 0 and pb.ServerLiveResponse.FromString(r.messages[0]).live, str(r)
        assert c.goaway is None


def test_a_call_over_padded_frames(strict):
    """Padded HEADERS (with and without PRIORITY, over CONTINUATION frames) and padded DATA
    (padding up to 255 bytes, and zero) are legal: the calls work.  (grpcio refuses both: see
    GRPCIO_DEVIATIONS.)"""
    with strict.h2() as c:
        for i, (fragment_size, pad, priority) in enumerate(
            [
                (16384, 0, None),
                (16384, 13, None),
                (7, 13, priority_payload(0, 200)),
                (40, 255, priority_payload(0, 1, exclusive=True)),
            ]
        ):
            x = rows(2, seed=i)
            sid = c.new_stream_id()
            hdrs = infer_headers(c, metadata=[(f"x-meta-{k}", "v" * 60) for k in range(10)])
            c.send_headers(sid, hdrs, fragment_size=max(fragment_size, pad + 6), pad_length=pad, priority=priority)
            c.send_data(
                sid, grpc_message(infer_request(x).SerializeToString()), end_stream=True, pad_length=pad, frame_size=pad + 41
            )
            check_infer_result(c.wait_stream(sid, 10.0), strict.weights, x)
        # a DATA frame of nothing but padding, then the message
        x = rows(1, seed=7)
        sid = c.new_stream_id()
        c.send_headers(sid, infer_headers(c))
        c.send_frame(FrameType.DATA, Flag.PADDED, sid, padded(b"", 100))
        c.send_data(sid, grpc_message(infer_request(x).SerializeToString()), end_stream=True)
        check_infer_result(c.wait_stream(sid, 10.0), strict.weights, x)
        assert c.goaway is None


def test_unknown_grpc_method_is_unimplemented(srv):
    with srv.h2() as c:
        for path in ("/inference.GRPCInferenceService/NoSuchMethod", "/no.such.Service/ModelInfer", "/nonsense"):
            r = c.unary(path, pb.ServerLiveRequest(), timeout=5.0)
            assert r.status == 200 and r.grpc_status == 12, f"{path}: {r}"  # UNIMPLEMENTED
        # a gRPC content-type with a subtype is gRPC
        r = c.unary("ServerLive", pb.ServerLiveRequest(), content_type="application/grpc+proto", timeout=5.0)
        assert r.status == 200 and r.grpc_status == 0, str(r)
        assert c.goaway is None


def test_a_content_type_that_is_not_grpc_is_415(strict):
    """gRPC over HTTP/2: a server SHOULD answer a content-type not starting "application/grpc"
    (or none) with HTTP 415.  (grpcio serves it as gRPC: see GRPCIO_DEVIATIONS.)"""
    with strict.h2() as c:
        for ct in ("application/json", "text/plain", "", None):
            r = c.unary("ServerLive", pb.ServerLiveRequest(), content_type=ct, timeout=5.0)
            assert r.status == 415, f"content-type {ct!r}: HTTP {r.status}, want 415: {r}"
        r = c.unary("ServerLive", pb.ServerLiveRequest(), timeout=5.0)  # the connection goes on
        assert r.grpc_status == 0, str(r)


def test_flow_control_a_tiny_client_window(srv):
    """The client allows 16 bytes per stream: the server sends no more than that until the window
    grows (WINDOW_UPDATE, then a larger SETTINGS_INITIAL_WINDOW_SIZE), then the rest and the trailers."""
    x = rows(MAX_BATCH, seed=5)
    with srv.h2(settings={Setting.INITIAL_WINDOW_SIZE: 16}, auto_window=False) as c:
        sid = c.start_call("ModelInfer", infer_request(x))
        st = c.stream(sid)

        def sent() -> int:
            return sum(len(f.payload) for f in c.received if f.type == FrameType.DATA and f.stream_id == sid)

        allowed = 16
        for _ in range(4):  # four windows of 16 bytes, given back one by one
            c.read_until(lambda f, want=allowed: sent() >= want or st.closed, 10.0)
            c.drain(0.3)  # nothing more should come
            assert sent() == allowed and not st.closed, f"window {allowed}, the server sent {sent()} bytes: {c.describe()}"
            c.window_update(sid, 16)
            allowed += 16
        c.window_update(0, 64)  # the connection window is not the limit here: this changes nothing
        c.read_until(lambda f, want=allowed: sent() >= want or st.closed, 10.0)
        c.drain(0.3)
        assert sent() == allowed and not st.closed, f"window {allowed}, the server sent {sent()} bytes: {c.describe()}"
        # a larger initial window raises the window of the open stream too
        c.send_settings({Setting.INITIAL_WINDOW_SIZE: 65535})
        c.wait_stream(sid, 10.0)
        assert st.reset_code is None and st.trailers is not None, str(st)
        assert sent() <= allowed + 65535 - 16
        check_infer_result(st, srv.weights, x)


def test_header_list_over_the_limit_fails_the_stream_not_the_connection(srv):
    with srv.h2() as c:
        limit = c.server_settings.get(Setting.MAX_HEADER_LIST_SIZE, 16 * 1024)
        hdrs = infer_headers(c, metadata=[("x-big", "b" * (2 * limit))])
        size = sum(len(k) + len(v) + 32 for k, v in hdrs)
        assert limit < size < 4 * limit
        x = rows(1)
        sid = c.new_stream_id()
        c.send_headers(sid, hdrs, fragment_size=min(c.max_frame_size, 16384))
        try:
            c.send_data(sid, grpc_message(infer_request(x).SerializeToString()), end_stream=True)
        except ConnectionError:
            pass  # the server ended the stream before its DATA: fine
        st = c.wait_stream(sid, 5.0)
        outcome = (
            f"RST_STREAM {error_name(st.reset_code)}"
            if st.reset_code is not None
            else f"HTTP {st.status} grpc-status {st.grpc_status}"
        )
        print(f"{srv.transport}: a {size}-byte header list (limit {limit}): {outcome}")
        if srv.strict:
            assert st.grpc_status == 8, f"want grpc-status 8 RESOURCE_EXHAUSTED, got {outcome}: {st}"
        else:
            assert st.grpc_status not in (None, 0) or st.reset_code is not None, str(st)
        x = rows(2, seed=3)
        check_infer_result(c.unary("ModelInfer", infer_request(x), timeout=10.0), srv.weights, x)
        assert c.goaway is None


def test_continuation_flood_is_cut_short(srv):
    """A field block that never ends (CONTINUATION after CONTINUATION, no END_HEADERS): the server
    must give up long before it has buffered it all, and quickly."""
    cap = 64 * MiB
    with srv.h2(timeout=5.0) as c:
        before = srv.rss()
        # valid HPACK all along (never-indexed literals): only the size is wrong
        chunk = c.encode_headers([(f"x-flood-{i}", "f" * 1000, True) for i in range(16)])
        fragment = (chunk * (c.max_frame_size // len(chunk) + 1))[: min(c.max_frame_size, 16384)]
        burst = encode_frame(FrameType.CONTINUATION, 0, 1, fragment) * 16
        c.send_headers(1, infer_headers(c), end_headers=False)
        t0, sent, ended = time.monotonic(), 0, None
        try:
            while sent < cap and time.monotonic() - t0 < 10:
                n = c.try_send(burst, timeout=0.5)
                sent += n
                if n < len(burst) and c.drain(0.05):  # blocked: did it answer?
                    break
                if c.goaway is not None:
                    break
            ended = goaway_or_close(c, 5.0)
        except ConnectionClosed as e:
            ended = "closed" if e.error_code is None else f"GOAWAY {error_name(e.error_code)}"
        except TimeoutError:
            ended = None
        took = time.monotonic() - t0
        growth = srv.rss() - before
        print(
            f"{srv.transport}: CONTINUATION flood: {ended} after {sent / MiB:.1f} MiB sent in {took * 1000:.0f} ms, RSS +{growth / MiB:.1f} MiB"
        )
        assert ended is not None, (
            f"the server neither ended the connection nor stopped reading: {sent / MiB:.1f} MiB sent; {c.describe()}"
        )
        assert sent < cap, f"the server took {sent / MiB:.0f} MiB of one field block ({ended})"
        assert took < 5.0, f"{ended} only after {took:.1f}s"
        assert growth < 32 * MiB, f"server RSS grew {growth / MiB:.0f} MiB"
        if srv.strict:
            assert ended in ("GOAWAY ENHANCE_YOUR_CALM", "GOAWAY COMPRESSION_ERROR"), (
                f"wanted GOAWAY ENHANCE_YOUR_CALM, got {ended}; {c.describe()}"
            )


def test_data_beyond_the_flow_control_window(strict):
    """One DATA frame one byte larger than what is left of the server's window: FLOW_CONTROL_ERROR,
    on the stream or the connection.  What is left is known exactly: before that frame, every
    WINDOW_UPDATE the server sent for the DATA before it has been read (a server may give window
    back as data arrives, but not in the middle of a frame)."""
    declared = MAX_BODY - 1024  # one message, larger than the windows, that never completes here
    with strict.h2() as c:
        c.drain(0.2)  # the WINDOW_UPDATEs of the handshake
        sid = open_stream(c, 1)
        st = c.stream(sid)
        sent, chunk = 0, grpc_message(b"", length=declared) + b"\0" * 995

        def data(n: int) -> None:
            nonlocal sent
            c.send_frame(FrameType.DATA, 0, sid, (chunk if sent == 0 else b"") + b"\0" * (n - (len(chunk) if sent == 0 else 0)))
            c.send_window -= n
            st.send_window -= n
            sent += n

        data(len(chunk))
        for _ in range(8):
            c.drain(0.3)  # whatever window the server gives back for what it has read
            left = min(c.send_window, st.send_window)
            assert sent + left + 1 <= declared, (
                f"the server's window ({left}) is larger than this module's message limit: the test cannot overrun it"
            )
            if left + 1 <= c.max_frame_size:
                data(left + 1)
                break
            data(min(c.max_frame_size, left + 1 - c.max_frame_size + 1000))  # use some window, look again
        else:
            raise AssertionError(f"could not bring the window under a frame's size: {c.describe()}")
        try:
            c.read_until(lambda f: st.reset_code is not None or (f.type == FrameType.GOAWAY and f.error_code != 0), 3.0)
        except ConnectionClosed:
            pass
        except TimeoutError:
            raise AssertionError(
                f"{sent} bytes of DATA, the last frame {left + 1} bytes against {left} left of the window: "
                f"no FLOW_CONTROL_ERROR within 3 s; frames: {c.describe()}"
            ) from None
        got = st.reset_code if st.reset_code is not None else (c.goaway.error_code if c.goaway is not None else None)
        assert got == FC, f"wanted FLOW_CONTROL_ERROR, got {error_name(got)}; frames: {c.describe()}"


def test_streams_over_max_concurrent_streams_are_refused(strict):
    with strict.h2() as c:
        limit = c.max_concurrent_streams
        assert limit is not None, f"the server advertised no SETTINGS_MAX_CONCURRENT_STREAMS: {c.server_settings}"
        assert limit <= 20_000, f"SETTINGS_MAX_CONCURRENT_STREAMS is {limit}: more streams than this test opens"
        extra = 3
        hdrs = infer_headers(c)
        frames = []
        for i in range(limit + extra):
            frames.append(encode_frame(FrameType.HEADERS, Flag.END_HEADERS, 2 * i + 1, c.encode_headers(hdrs)))
        c.send(b"".join(frames), timeout=30.0)
        c.next_stream_id = 2 * (limit + extra) + 1
        excess = [2 * i + 1 for i in range(limit, limit + extra)]
        try:
            c.read_until(lambda f: all(c.stream(s).reset_code is not None for s in excess), 10.0)
        except TimeoutError:
            raise AssertionError(
                f"{limit + extra} streams open at once against a limit of {limit}: the excess were not refused; {c.describe()}"
            ) from None
        codes = {s: c.stream(s).reset_code for s in excess}
        assert all(v == ErrorCode.REFUSED_STREAM for v in codes.values()), {s: error_name(v) for s, v in codes.items()}
        c.drain(0.3)
        wrongly = [s for s in range(1, 2 * limit, 2) if c.stream(s).reset_code is not None]
        assert not wrongly, f"streams within the limit were reset: {wrongly[:10]}"
        assert c.goaway is None


# -- hostile load -----------------------------------------------------------------------------------------


def _calls_meanwhile(srv: Served, stop: threading.Event, errors: list, latencies: list) -> None:
    """tritonclient calls on their own connection, one after another, until `stop`."""
    client = grpc_client(srv.url)
    try:
        i = 0
        while not stop.is_set():
            t = time.monotonic()
            try:
                srv.normal_call(client, timeout=5.0, seed=i)
            except Exception as e:  # noqa: BLE001 - reported by the test
                errors.append(repr(e))
                return
            latencies.append(time.monotonic() - t)
            i += 1
            time.sleep(0.02)
    finally:
        client.close()


def test_a_slow_reader_neither_grows_memory_nor_stalls_others(strict):
    """A client that sends many requests (up to 40,000) for big answers (16 KiB each) and never
    reads: its windows are open wide, so only TCP holds the server back.  The server's memory must
    stay bounded (all the answers would be over 600 MiB) and another connection must be served
    meanwhile."""
    srv = strict
    before = srv.rss()
    c = H2Client.connect(srv.url, settings={Setting.INITIAL_WINDOW_SIZE: MAX_WINDOW}, auto_window=False, rcvbuf=16384)
    with c:
        c.window_update(0, MAX_WINDOW - 65535)
        c.drain(0.2)
        request = infer_request(np.ones((1, 1), np.float32), model="wide", name="X")
        r = c.unary("ModelInfer", request)  # one call read in full; it also fills the HPACK tables
        assert r.grpc_status == 0 and len(r.data) > 4 * WIDE, str(r)
        budget = min(c.send_window, 4 * MiB)  # request DATA the server allowed before we stopped reading
        hdrs = c.encode_headers(infer_headers(c))  # only indexed fields now: the same bytes every time
        assert hdrs == c.encode_headers(infer_headers(c))
        body = grpc_message(request.SerializeToString())
        t0, sent_requests, blocked, closed = time.monotonic(), 0, False, None
        sid = c.next_stream_id
        while not blocked and closed is None and time.monotonic() - t0 < 15 and sent_requests < 40_000:
            batch = []
            for _ in range(200):
                batch.append(encode_frame(FrameType.HEADERS, Flag.END_HEADERS, sid, hdrs))
                if budget >= len(body):  # within the window: a real request
                    batch.append(encode_frame(FrameType.DATA, Flag.END_STREAM, sid, body))
                    budget -= len(body)
                else:  # no window left that we know of: the request ends without a message
                    batch[-1] = encode_frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, sid, hdrs)
                sid += 2
            data = b"".join(batch)
            try:
                n = c.try_send(data, timeout=2.0)
            except ConnectionClosed as e:
                closed = str(e)
                break
            blocked = n < len(data)
            sent_requests += len(batch) if not blocked else 0
        c.next_stream_id = sid
        took = time.monotonic() - t0
        # stuck: another connection is served, promptly
        t = time.monotonic()
        srv.normal_call(timeout=5.0)
        other = time.monotonic() - t
        peak = peak_rss(srv, 3.0)  # whatever the server was going to do with what it read
        growth = peak - before
    recovery = wait_serving(srv, 10.0)  # (so that a failure here is this test's, not the next one's)
    print(
        f"{srv.transport}: slow reader sent ~{sent_requests} requests in {took:.1f}s "
        f"({'blocked' if blocked else closed or 'not blocked'}); another call took {other:.2f}s; "
        f"RSS peak +{growth / MiB:.0f} MiB; serving again {recovery:.2f}s after the reader left"
    )
    assert other < 5.0
    assert growth < 200 * MiB, f"the server's RSS grew {growth / MiB:.0f} MiB for one client that does not read"


def test_a_ping_flood_without_reading_is_bounded(srv):
    """PINGs (and SETTINGS) cost the server an answer each: a client that sends them without
    reading must meet backpressure or a GOAWAY, not unbounded buffering."""
    before = srv.rss()
    with H2Client.connect(srv.url, rcvbuf=16384) as c:
        burst = (encode_frame(FrameType.PING, 0, 0, b"floodme!") * 63 + encode_frame(FrameType.SETTINGS)) * 1024
        t0, sent, how = time.monotonic(), 0, "not blocked"
        while time.monotonic() - t0 < 10 and sent < 256 * MiB:
            try:
                n = c.try_send(burst, timeout=2.0)
            except ConnectionClosed as e:
                how = f"closed ({error_name(e.error_code)})"
                break
            sent += n
            if n < len(burst):
                how = "blocked"
                break
        t = time.monotonic()
        srv.normal_call(timeout=5.0)
        other = time.monotonic() - t
        growth = peak_rss(srv, 1.0) - before  # what it does with what it has read
        print(
            f"{srv.transport}: PING flood: {sent / MiB:.0f} MiB sent in {time.monotonic() - t0:.1f}s, {how}; another call {other:.2f}s; RSS +{growth / MiB:.0f} MiB"
        )
        assert growth < 200 * MiB, f"the server's RSS grew {growth / MiB:.0f} MiB answering PINGs nobody reads"


def test_rapid_reset(strict):
    """Streams opened and at once reset (CVE-2023-44487's pattern), tens of thousands: the server
    stays healthy, serves another connection meanwhile, and the connection's window is not lost
    to the reset streams."""
    srv = strict
    stop, errors, latencies = threading.Event(), [], []
    meanwhile = threading.Thread(target=_calls_meanwhile, args=(srv, stop, errors, latencies), daemon=True)
    before = srv.rss()
    with srv.h2(timeout=10.0) as c:
        r = c.unary("ModelInfer", infer_request(rows(1)))  # also fills the HPACK tables
        assert r.grpc_status == 0, str(r)
        hdrs = c.encode_headers(infer_headers(c))  # only indexed fields now: the same bytes every time
        assert hdrs == c.encode_headers(infer_headers(c))
        body = grpc_message(infer_request(rows(1)).SerializeToString())
        meanwhile.start()
        t0, sid, ended = time.monotonic(), c.next_stream_id, None
        first = sid
        try:
            while sid < first + 2 * 30_000 and time.monotonic() - t0 < 15:
                batch = []
                for _ in range(500):
                    batch.append(encode_frame(FrameType.HEADERS, Flag.END_HEADERS, sid, hdrs))
                    if sid % 4 == 1:  # every other one with its request DATA before the reset
                        batch.append(encode_frame(FrameType.DATA, Flag.END_STREAM, sid, body))
                        c.send_window -= len(body)
                    batch.append(encode_frame(FrameType.RST_STREAM, 0, sid, rst_stream_payload(ErrorCode.CANCEL)))
                    sid += 2
                c.send(b"".join(batch), timeout=10.0)
                c.drain(0.0)
                if c.goaway is not None:
                    break
                while c.send_window < 500 * len(body):  # the server must give the window back
                    c.read_frame(5.0)
            c.next_stream_id = sid
            if c.goaway is None:
                r = c.unary("ServerLive", pb.ServerLiveRequest(), timeout=10.0)
                assert r.grpc_status == 0, str(r)
            ended = "served" if c.goaway is None else f"GOAWAY {error_name(c.goaway.error_code)}"
        except ConnectionClosed as e:
            ended = f"closed ({error_name(e.error_code)})"
        except TimeoutError as e:
            raise AssertionError(
                f"after {(sid - first) // 2} reset streams: {e}; connection window {c.send_window}; {c.describe()}"
            ) from None
        finally:
            took = time.monotonic() - t0
            stop.set()
            meanwhile.join(30)
    recovery = wait_serving(srv, 10.0)  # (so that a failure here is this test's, not the next one's)
    growth = srv.rss() - before
    print(f"{srv.transport}: rapid reset: {(sid - first) // 2} streams in {took:.1f}s, {ended}; "
          f"{len(latencies)} calls meanwhile, slowest {max(latencies, default=0):.2f}s; "
          f"serving again after {recovery:.2f}s; RSS +{growth / MiB:.0f} MiB")  # fmt: skip
    assert not errors, f"a call on another connection failed during the flood: {errors}"
    assert latencies and max(latencies) < 5.0
    assert growth < 200 * MiB


# -- fuzz -------------------------------------------------------------------------------------------------


@dataclass
class RawFrame:
    type: int
    flags: int
    stream_id: int
    payload: bytes
    length_delta: int  # the length field says len(payload) + this

    def encode(self, c: H2Client) -> bytes:
        n = max(0, len(self.payload) + self.length_delta)
        return encode_frame(self.type, self.flags, self.stream_id, self.payload, length=n)

    def __repr__(self) -> str:
        t = FrameType(self.type).name if self.type < 10 else f"0x{self.type:02x}"
        lie = f", length {self.length_delta:+d}" if self.length_delta else ""
        return f"{t}(flags=0x{self.flags:02x}, stream={self.stream_id}, {self.payload!r}{lie})"


@dataclass
class Call:
    """A real ModelInfer (HEADERS, maybe DATA) on a stream: the frames of a well-behaved client."""

    stream_id: int
    with_data: bool
    end_stream: bool

    def encode(self, c: H2Client) -> bytes:
        block = c.encode_headers(infer_headers(c))
        if not self.with_data:
            return encode_frame(
                FrameType.HEADERS, Flag.END_HEADERS | (Flag.END_STREAM if self.end_stream else 0), self.stream_id, block
            )
        body = grpc_message(infer_request(rows(1)).SerializeToString())
        return encode_frame(FrameType.HEADERS, Flag.END_HEADERS, self.stream_id, block) + encode_frame(
            FrameType.DATA, Flag.END_STREAM if self.end_stream else 0, self.stream_id, body
        )


stream_ids = st.one_of(st.sampled_from([0, 0, 1, 1, 2, 3, 5, 7, 2**31 - 1]), st.integers(0, 2**31 - 1))
payload_for = {
    FrameType.PING: st.binary(min_size=8, max_size=8),
    FrameType.WINDOW_UPDATE: st.integers(0, 2**32 - 1).map(lambda v: struct.pack(">I", v)),
    FrameType.RST_STREAM: st.integers(0, 16).map(lambda v: struct.pack(">I", v)),
    FrameType.PRIORITY: st.binary(min_size=5, max_size=5),
    FrameType.SETTINGS: st.lists(st.tuples(st.integers(0, 8), st.integers(0, 2**32 - 1)), max_size=4).map(settings_payload),
    FrameType.GOAWAY: st.binary(min_size=8, max_size=16),
}


@st.composite
def raw_frames(draw):
    t = draw(st.one_of(st.integers(0, 9), st.integers(0, 9), st.integers(10, 255)))
    payload = draw(st.one_of(payload_for.get(t, st.binary(max_size=40)), st.binary(max_size=40)))
    delta = draw(
        st.one_of(
            st.just(0), st.just(0), st.just(0), st.integers(-8, 8), st.sampled_from([1 << 14, (1 << 24) - 1 - len(payload)])
        )
    )
    flags = draw(st.one_of(st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x25]), st.integers(0, 255)))
    return RawFrame(t, flags, draw(stream_ids), payload, max(delta, -len(payload)))


frame_sequences = st.lists(
    st.one_of(raw_frames(), raw_frames(), st.builds(Call, st.sampled_from([1, 3, 5, 7, 9]), st.booleans(), st.booleans())),
    min_size=1,
    max_size=10,
)


def _complete(stream: bytes, max_frame: int) -> bytes:
    """Zero bytes that finish the last frame the server is reading, so that a PING after them is
    read as a PING; none when the server meets a length over its max frame size first (it must
    refuse that frame from its header alone)."""
    pad = b""
    while True:
        s, i = stream + pad, 0
        while i + 9 <= len(s):
            n = int.from_bytes(s[i : i + 3], "big")
            if n > max_frame:
                return pad
            i += 9 + n
        if i == len(s):
            return pad
        pad += b"\0" * (i - len(s) if i > len(s) else 9 - (len(s) - i))


@pytest.fixture
def fuzz_state(srv):
    client = grpc_client(srv.url)
    state = {"client": client, "rss0": srv.rss(), "peak": 0, "examples": 0}
    yield state
    client.close()
    print(f"{srv.transport}: {state['examples']} fuzz examples, RSS +{(state['peak'] - state['rss0']) / MiB:.0f} MiB at most")


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(frames=frame_sequences)
def test_fuzzed_frame_sequences(srv, fuzz_state, frames):
    fuzz_state["examples"] += 1
    note(f"frames: {frames}")
    with srv.h2(timeout=5.0) as c:
        c.decoder.max_allowed_table_size = 2**32  # fuzzed SETTINGS may let the server's table grow
        stream = b"".join(f.encode(c) for f in frames)
        stream += _complete(stream, c.max_frame_size)
        marker = os.urandom(8)
        stream += encode_frame(FrameType.PING, 0, 0, marker)
        note(f"bytes: {stream[:400].hex()}{'...' if len(stream) > 400 else ''}")
        t0 = time.monotonic()
        try:
            c.send(stream, timeout=2.0)
        except ConnectionClosed:
            pass
        except TimeoutError:
            raise AssertionError(f"the server did not read {len(stream)} bytes within 2 s")
        outcome = None
        try:
            c.read_until(
                lambda f: (
                    (f.type == FrameType.PING and f.has(Flag.ACK) and f.payload == marker)
                    or (f.type == FrameType.GOAWAY and f.error_code != 0)
                ),
                2.0,
            )
            outcome = "answered" if c.goaway is None else f"GOAWAY {error_name(c.goaway.error_code)}"
        except ConnectionClosed as e:
            outcome = f"closed ({error_name(e.error_code)})"
        except TimeoutError:
            raise AssertionError(f"no PING ACK, no GOAWAY, no close within 2 s; frames read: {c.describe()}") from None
        note(f"outcome: {outcome} after {time.monotonic() - t0:.2f}s; frames read: {c.describe()}")
    assert srv.alive(), f"the server died:\n{srv.server.output()[-4000:]}"
    srv.normal_call(fuzz_state["client"], timeout=5.0, seed=fuzz_state["examples"])
    now = srv.rss()
    fuzz_state["peak"] = max(fuzz_state["peak"], now)
    assert now - fuzz_state["rss0"] < 128 * MiB, (
        f"the server's RSS grew {(now - fuzz_state['rss0']) / MiB:.0f} MiB over the fuzz run"
    )
