"""The fast gRPC transport: `inference.GRPCInferenceService` on Parity's own HTTP/2 layer
(`http2.py`), without grpcio's per-call machinery.

gRPC over HTTP/2, server side: a call is a stream whose request HEADERS carry `:path`
(/inference.GRPCInferenceService/<Method>), `content-type: application/grpc`, and optionally
`grpc-timeout`, `grpc-encoding` and `authorization`; its DATA carries length-prefixed messages
(1 byte compressed flag, 4 bytes big-endian length); the answer is HEADERS, DATA with the
response message(s), and trailers with `grpc-status` and a percent-encoded `grpc-message`
(or, for an error before any answer, one trailers-only HEADERS frame).

The request path of ModelInfer: the message is decoded as soon as it is complete (usually one
DATA frame), submitted to the core with a completion callback, and answered from that callback
with constant header and trailer blocks: one write for all the answers of a batch.
`grpc-timeout` becomes the request's deadline in the batcher; RST_STREAM from the client
cancels the request, which leaves its queue.  ModelStreamInfer answers each message in
completion order.  Everything else decodes the request, runs the shared `GrpcService` handler
and answers.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import zlib
from functools import partial
from typing import Callable

from google.protobuf.message import DecodeError

from parity._proto.inference import grpc_service_pb2 as pb
from parity.config import ServerConfig
from parity.errors import DeadlineExceeded, GrpcCode, InternalError, ParityError, as_parity_error
from parity.serving import clock
from parity.serving.core import InferenceCore, bearer
from parity.serving.transport import http2
from parity.serving.transport.base import ConnectionSet, listen_socket
from parity.serving.transport.grpc_service import (
    FEATURE_SERVICE,
    SERVICE,
    GrpcService,
    Wire,
    decode_infer_request,
    stream_error,
    stream_ok,
)
from parity.serving.transport.http2 import H2Connection, H2Stream, hpack_int, literal, literal_indexed_name

log = logging.getLogger("parity.grpc")

_CancelledError = asyncio.CancelledError
# A client resets its call when its deadline passes; a reset this close to the request's deadline
# is counted as a timeout (the two clocks started a network hop apart).
_CLOCK_SLACK_S = 0.005

# Constant header blocks (HPACK literals that leave the dynamic table alone).
_CONTENT_TYPE = literal_indexed_name(31, b"application/grpc")  # static entry 31: content-type
RESPONSE_HEAD = http2.STATUS_200 + _CONTENT_TYPE + literal(b"grpc-accept-encoding", b"identity,deflate,gzip")
TRAILERS_OK = literal(b"grpc-status", b"0")
# The same fields, entered into the client's dynamic table the first time (literals with
# incremental indexing, RFC 7541 6.2.1), so that later answers are one byte per field: what a
# client decodes cheapest.  Entry sizes: 60 + 73 + 44 bytes, well under the 4096 default.
_INDEXED_CT = b"\x5f" + hpack_int(16, 7) + b"application/grpc"  # name: static entry 31
_INDEXED_GAE = b"\x40" + hpack_int(20, 7) + b"grpc-accept-encoding" + hpack_int(21, 7) + b"identity,deflate,gzip"
_INDEXED_OK = b"\x40" + hpack_int(11, 7) + b"grpc-status" + hpack_int(1, 7) + b"0"


class _Marker:
    """A header block the connection renders when it is written (see GrpcConnection.render)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


HEAD = _Marker("response headers")
OK = _Marker("OK trailers")
_ENCODINGS = {b"identity": None, b"gzip": 31, b"deflate": 15}  # zlib wbits
_TIMEOUT_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}

INFER, STREAM, OTHER = 1, 2, 3


def percent_encode(message: str) -> bytes:
    """grpc-message: UTF-8, with bytes outside printable ASCII and '%' percent-encoded."""
    raw = message.encode("utf-8", "replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def status_block(code: int, message: str, trailers_only: bool) -> bytes:
    block = literal(b"grpc-status", str(int(code)).encode())
    if message:
        block += literal(b"grpc-message", percent_encode(message))
    if trailers_only:
        block = http2.STATUS_200 + _CONTENT_TYPE + block
    return block


def parse_timeout(value: bytes) -> float | None:
    """grpc-timeout (1-8 digits and a unit) in seconds; None if malformed."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    if unit is None:
        return None
    return int(value[:-1]) * unit


class Head:
    """What a request's headers say, parsed and judged once per distinct header block: either
    `entry` (the method's kind, request class and handler) or `error` ((HTTP status, gRPC
    code, message) to answer with)."""

    __slots__ = ("entry", "error", "timeout", "wbits", "token")

    def __init__(self, headers: list, methods: dict) -> None:
        method = path = ctype = timeout = encoding = None
        self.token = None
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                ctype = value
            elif name == b"grpc-timeout":
                timeout = value
            elif name == b"grpc-encoding":
                encoding = value
            elif name == b"authorization":
                self.token = bearer(value.decode("latin-1"))
        self.entry = None
        self.error = None
        self.timeout = None
        self.wbits = None
        if method != b"POST":
            self.error = (405, GrpcCode.UNIMPLEMENTED, "gRPC calls are POST requests")
        elif ctype is None or not ctype.startswith(b"application/grpc"):
            self.error = (415, GrpcCode.INTERNAL, "content-type must be application/grpc")
        elif (entry := methods.get(path or b"")) is None:
            where = (path or b"").decode("latin-1")
            self.error = (
                200,
                GrpcCode.UNIMPLEMENTED,
                f"unknown method {where}; this server implements {SERVICE} (KServe v2 / Triton) and {FEATURE_SERVICE}",
            )
        elif encoding is not None and encoding not in _ENCODINGS:
            self.error = (
                200,
                GrpcCode.UNIMPLEMENTED,
                f"grpc-encoding {encoding.decode('latin-1')} is not supported; use identity, gzip or deflate",
            )
        elif timeout is not None and (secs := parse_timeout(timeout)) is None:
            self.error = (200, GrpcCode.INVALID_ARGUMENT, f"malformed grpc-timeout {timeout.decode('latin-1')!r}")
        else:
            self.entry = entry
            self.wbits = _ENCODINGS.get(encoding) if encoding is not None else None
            self.timeout = secs if timeout is not None else None


class GrpcStream(H2Stream):
    __slots__ = ("kind", "handler", "request_cls", "inbuf", "wbits", "deadline", "token", "messages",
                 "ticket", "task", "inflight", "eof", "stopping", "timer")  # fmt: skip

    def __init__(self, sid: int, send_window: int):
        # H2Stream's fields set here too: one call per stream instead of two
        self.id = sid
        self.recv_window = http2.STREAM_WINDOW
        self.unacked = 0
        self.send_window = send_window
        self.remote_closed = self.closed = self.headers_sent = False
        self.outq = self.trailers = None
        self.out_bytes = 0
        self.kind = 0
        self.inbuf = self.wbits = self.deadline = self.token = self.ticket = self.task = self.inflight = self.timer = None
        self.messages = 0
        self.eof = self.stopping = False


class GrpcConnection(H2Connection):
    def __init__(self, owner: "FastGrpcTransport") -> None:
        cfg = owner.config
        super().__init__(
            max_concurrent_streams=cfg.grpc_max_concurrent_streams,
            max_header_list_size=cfg.grpc_max_header_list_bytes,
            max_message=cfg.max_body_bytes,
        )
        self.owner = owner
        self.core = owner.core
        self.wire = owner.wire
        self.methods = owner.methods
        self.max_message = cfg.max_body_bytes
        # HPACK state of our answers: the fields entered into the client's dynamic table, in
        # order, and the blocks that refer to them (None: not entered yet)
        self._entries: list[str] = []
        self._head: bytes | None = None
        self._ok: bytes | None = None
        self._literal_only = False
        self._size_update = False

    # -- our answers' header blocks -------------------------------------------------------------

    def render(self, block) -> bytes:
        if block is HEAD:
            block = self._head
            if block is None:
                block = self._enter(HEAD)
        elif block is OK:
            block = self._ok
            if block is None:
                block = self._enter(OK)
        if self._size_update:  # the client shrank its table: say we use none (RFC 7541 4.2)
            self._size_update = False
            return b"\x20" + block
        return block

    def _enter(self, marker: _Marker) -> bytes:
        """The first block of its kind: enter its fields into the client's dynamic table."""
        if self._literal_only:
            return RESPONSE_HEAD if marker is HEAD else TRAILERS_OK
        entries = self._entries
        if marker is HEAD:
            entries += ["content-type", "grpc-accept-encoding"]
            block = http2.STATUS_200 + _INDEXED_CT + _INDEXED_GAE
        else:
            entries.append("grpc-status")
            block = _INDEXED_OK

        def index(name: str) -> bytes:  # the newest entry is 62 (RFC 7541 2.3.3)
            return bytes([0x80 | (62 + len(entries) - 1 - entries.index(name))])

        # what later blocks say: indices change as entries are added, so both are rebuilt
        if "content-type" in entries:
            self._head = http2.STATUS_200 + index("content-type") + index("grpc-accept-encoding")
        if "grpc-status" in entries:
            self._ok = index("grpc-status")
        return block

    def header_table_size(self, size: int) -> None:
        if size < 4096 and not self._literal_only:
            # Below the default: stop using the table (a size update of 0 empties it) and send
            # literals from now on.
            self._literal_only = True
            self._size_update = True
            self._head = RESPONSE_HEAD
            self._ok = TRAILERS_OK

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.owner.stopping:
            self.shutdown()
            return
        self.owner.connections.add(self)

    def on_closed(self) -> None:
        self.owner.connection_closed(self)

    # -- streams in -----------------------------------------------------------------------------

    def new_stream(self, sid: int) -> GrpcStream:
        return GrpcStream(sid, self.peer_window)

    def parse_headers(self, headers: list) -> Head:
        return Head(headers, self.methods)

    def on_headers(self, stream: GrpcStream, head: Head, size: int, end_stream: bool) -> None:
        entry = head.entry
        if entry is None:
            status, code, message = head.error
            if status != 200:
                self._http_error(stream, status, code, message)
            else:
                self._fail(stream, code, message)
            return
        if size > self.max_header_list:
            self._fail(stream, GrpcCode.RESOURCE_EXHAUSTED, f"request headers of {size} bytes exceed the server's limit of {self.max_header_list}")
            return
        stream.kind, stream.request_cls, stream.handler = entry
        stream.wbits = head.wbits
        stream.token = head.token
        if head.timeout is not None:
            stream.deadline = clock.now() + head.timeout
            if stream.kind == STREAM:  # the whole call's deadline: it ends the stream
                stream.timer = clock.call_at(self.loop, stream.deadline, self._stream_deadline, stream)
        if end_stream:
            self._end_of_input(stream)

    def on_data(self, stream: GrpcStream, data: bytes, end_stream: bool) -> None:
        if data:
            if stream.inbuf is None and data[0] == 0 and len(data) >= 5 and int.from_bytes(data[1:5], "big") == len(data) - 5:
                # the common case: one whole uncompressed message in one frame
                if stream.kind == INFER and not stream.messages:
                    stream.messages = 1
                    self._infer(stream, data[5:])
                else:
                    self._message(stream, data[5:], 0)
            else:
                self._buffer(stream, data)
        if end_stream and not stream.closed:
            self._end_of_input(stream)

    def _buffer(self, stream: GrpcStream, data: bytes) -> None:
        buf = stream.inbuf
        if buf is None:
            buf = stream.inbuf = bytearray()
        before = len(buf)
        buf += data
        limit = self.max_message
        pos = 0
        while len(buf) - pos >= 5:
            size = int.from_bytes(buf[pos + 1 : pos + 5], "big")
            if size > limit:
                self.buffered_in -= before
                stream.inbuf = None
                self._fail(stream, GrpcCode.RESOURCE_EXHAUSTED, _too_large(size, limit))
                return
            end = pos + 5 + size
            if len(buf) < end:
                break
            flag = buf[pos]
            msg = bytes(memoryview(buf)[pos + 5 : end])
            pos = end
            self._message(stream, msg, flag)
            if stream.closed:
                self.buffered_in -= before
                stream.inbuf = None
                return
        if pos:
            del buf[:pos]
        self.buffered_in += len(buf) - before
        if not buf:
            stream.inbuf = None
        if pos and self.conn_unacked >= http2.CONN_WINDOW // 2:
            self.release_connection_window()  # held while the buffered bytes were over the cap

    def _end_of_input(self, stream: GrpcStream) -> None:
        if stream.inbuf:
            self.buffered_in -= len(stream.inbuf)
            stream.inbuf = None
            self._fail(stream, GrpcCode.INTERNAL, "the request ended in the middle of a message")
            return
        if stream.kind == STREAM:
            stream.eof = True
            if not stream.inflight:
                self._finish_stream(stream)
        elif not stream.messages:
            self._fail(stream, GrpcCode.INVALID_ARGUMENT, "the call ended without a request message")

    def on_reset(self, stream: GrpcStream, code: int) -> None:
        if stream.inbuf:
            self.buffered_in -= len(stream.inbuf)
            stream.inbuf = None
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        tickets = []
        if stream.ticket is not None:
            tickets.append(stream.ticket)
            stream.ticket = None
        if stream.inflight:
            tickets += stream.inflight
            stream.inflight = None
        if tickets:
            deadline = stream.deadline
            # a client resetting at its deadline gave up on time: a timeout, not a cancel
            timeout = deadline is not None and clock.now() >= deadline - _CLOCK_SLACK_S
            for ticket in tickets:
                if timeout and not ticket.done():
                    ticket.set_exception(DeadlineExceeded("the request's deadline passed before it was answered"))
                else:
                    ticket.cancel()  # leaves its queue; the callback counts it as cancelled
        if stream.task is not None:
            stream.task.cancel()
            stream.task = None

    # -- messages ---------------------------------------------------------------------------------

    def _message(self, stream: GrpcStream, msg: bytes, flag: int) -> None:
        if flag:
            if flag != 1 or stream.wbits is None:
                self._fail(stream, GrpcCode.INTERNAL, "a compressed message needs grpc-encoding gzip or deflate")
                return
            try:
                d = zlib.decompressobj(stream.wbits)
                out = d.decompress(msg, self.max_message + 1)
            except zlib.error as e:
                self._fail(stream, GrpcCode.INTERNAL, f"the compressed message cannot be decompressed: {e}")
                return
            if len(out) > self.max_message or d.unconsumed_tail:
                self._fail(stream, GrpcCode.RESOURCE_EXHAUSTED, _too_large(len(out), self.max_message))
                return
            msg = out
        kind = stream.kind
        if kind == INFER:
            if stream.messages:
                self._fail(stream, GrpcCode.INVALID_ARGUMENT, "a unary call carries exactly one request message")
                return
            stream.messages = 1
            self._infer(stream, msg)
        elif kind == STREAM:
            stream.messages += 1
            self._stream_infer(stream, msg)
        else:
            if stream.messages:
                self._fail(stream, GrpcCode.INVALID_ARGUMENT, "a unary call carries exactly one request message")
                return
            stream.messages = 1
            try:
                request = stream.request_cls.FromString(msg)
            except DecodeError as e:
                self._fail(stream, GrpcCode.INVALID_ARGUMENT, f"the request is not a valid {stream.request_cls.__name__}: {e}")
                return
            stream.task = self.loop.create_task(self._call(stream, stream.handler, request))

    # ModelInfer

    def _infer(self, stream: GrpcStream, msg: bytes) -> None:
        try:
            request = pb.ModelInferRequest.FromString(msg)
        except DecodeError as e:
            self._fail(stream, GrpcCode.INVALID_ARGUMENT, f"the request is not a valid ModelInferRequest: {e}")
            return
        try:
            req = decode_infer_request(request)
            deadline = stream.deadline
            if deadline is not None and (req.deadline is None or deadline < req.deadline):
                req.deadline = deadline
            stream.ticket = self.core.submit(req, partial(self._infer_done, stream, req))[0]
        except Exception as e:  # noqa: BLE001 - ParityErrors are counted by the core; anything else is a bug
            self._error(stream, e)

    def _infer_done(self, stream: GrpcStream, req, ticket) -> None:
        core = self.core
        plan, t0 = ticket.context
        stream.ticket = None
        try:
            outputs = ticket.result()
        except BaseException as exc:  # CancelledError included: the core counts it as cancelled
            err = core.fail(plan, t0, exc)
            if not stream.closed:
                self._error(stream, err)
            return
        if stream.closed:
            core.fail(plan, t0, _CancelledError())
            return
        core.succeeded(plan, t0)
        try:
            body = self.wire.encode(plan.model_name, plan.label, req.id, outputs, plan.output_types)
        except Exception as e:  # noqa: BLE001 - an encoding bug: answer it, keep serving
            log.exception("encoding a gRPC inference response failed")
            self._error(stream, InternalError(f"internal error encoding the response: {type(e).__name__}: {e}"))
            return
        self.send_response(stream, HEAD, body, OK, b"\x00" + len(body).to_bytes(4, "big"))

    # ModelStreamInfer

    def _stream_infer(self, stream: GrpcStream, msg: bytes) -> None:
        if stream.stopping:
            return  # the server is stopping: messages after that are not taken
        try:
            request = pb.ModelInferRequest.FromString(msg)
        except DecodeError as e:
            self._stream_message(stream, stream_error(f"the request is not a valid ModelInferRequest: {e}", "", ""))
            return
        try:
            req = decode_infer_request(request)
            ticket = self.core.submit(req, partial(self._stream_done, stream, req))[0]
        except Exception as e:  # noqa: BLE001
            err = as_parity_error(e)
            if not isinstance(e, ParityError):
                log.error("gRPC stream: unexpected error", exc_info=e)
            self._stream_message(stream, stream_error(err.message, request.model_name, request.id))
            return
        if stream.inflight is None:
            stream.inflight = set()
        stream.inflight.add(ticket)

    def _stream_done(self, stream: GrpcStream, req, ticket) -> None:
        core = self.core
        plan, t0 = ticket.context
        if stream.inflight is not None:
            stream.inflight.discard(ticket)
        try:
            outputs = ticket.result()
        except BaseException as exc:
            err = core.fail(plan, t0, exc)
            if not stream.closed:
                self._stream_message(stream, stream_error(err.message, req.model_name, req.id))
        else:
            if stream.closed:
                core.fail(plan, t0, _CancelledError())
                return
            core.succeeded(plan, t0)
            try:
                out = stream_ok(self.wire.encode(plan.model_name, plan.label, req.id, outputs, plan.output_types))
            except Exception as e:  # noqa: BLE001 - an encoding bug must not end the stream
                log.error("gRPC stream: unexpected error", exc_info=e)
                out = stream_error(as_parity_error(e).message, req.model_name, req.id)
            self._stream_message(stream, out)
        if not stream.inflight and not stream.closed and (stream.eof or stream.stopping):
            self._finish_stream(stream)

    def _stream_message(self, stream: GrpcStream, body: bytes) -> None:
        if stream.closed or stream.trailers is not None:
            return  # ended, or ending behind queued answers
        if not stream.headers_sent:
            self.send_headers(stream, HEAD)
        self.send_data(stream, b"\x00" + len(body).to_bytes(4, "big") + body)

    def _stream_deadline(self, stream: GrpcStream) -> None:
        """The stream's grpc-timeout passed: it ends with DEADLINE_EXCEEDED; what it still has
        queued is dropped and counted as timed out."""
        stream.timer = None
        if not stream.closed:
            self._fail(stream, GrpcCode.DEADLINE_EXCEEDED, "the stream's deadline (grpc-timeout) passed")

    def _finish_stream(self, stream: GrpcStream) -> None:
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if stream.stopping and not stream.eof:
            self._fail(stream, GrpcCode.UNAVAILABLE, "the server is shutting down; open a new stream (to another replica)")
        else:
            self.send_trailers(stream, OK if stream.headers_sent else RESPONSE_HEAD + TRAILERS_OK)

    # the other methods

    async def _call(self, stream: GrpcStream, handler: Callable, request) -> None:
        try:
            response = await handler(request, stream.token)
        except _CancelledError:
            return
        except Exception as e:  # noqa: BLE001
            stream.task = None
            self._error(stream, e)
            return
        stream.task = None
        body = response if type(response) is bytes else response.SerializeToString()
        self.send_response(stream, HEAD, body, OK, b"\x00" + len(body).to_bytes(4, "big"))

    # -- answers ----------------------------------------------------------------------------------

    def _error(self, stream: GrpcStream, exc: BaseException) -> None:
        err = as_parity_error(exc)
        if not isinstance(exc, ParityError):
            log.error("gRPC: unexpected error", exc_info=exc)
        self._fail(stream, err.grpc_code, err.message)

    def _fail(self, stream: GrpcStream, code: int, message: str) -> None:
        """End the call with a status; a client still sending is told to stop (RST_STREAM
        NO_ERROR after the complete answer, RFC 9113 8.1)."""
        if stream.closed:
            return
        self.send_trailers(stream, status_block(code, message, not stream.headers_sent))
        if stream.closed and not stream.remote_closed:
            self._write(http2.frame(http2.RST_STREAM, 0, stream.id, b"\x00\x00\x00\x00"))
        self.on_reset(stream, http2.NO_ERROR)

    def _http_error(self, stream: GrpcStream, status: int, code: int, message: str) -> None:
        block = http2.status_field(status) + status_block(code, message, False)
        self.send_trailers(stream, block)
        if stream.closed and not stream.remote_closed:
            self._write(http2.frame(http2.RST_STREAM, 0, stream.id, b"\x00\x00\x00\x00"))

    def shutdown(self) -> None:
        for stream in list(self.streams.values()):
            if isinstance(stream, GrpcStream) and stream.kind == STREAM:
                stream.stopping = True
                if not stream.inflight:
                    self._finish_stream(stream)
        super().shutdown()


def _too_large(size: int, limit: int) -> str:
    return (
        f"message of {size} bytes is larger than the server's limit of {limit} bytes (--max-body-bytes); "
        "send smaller requests (split the batch)"
    )


class FastGrpcTransport(ConnectionSet):
    """gRPC on `http2.H2Connection`; plain TCP, or TLS with ALPN h2 when a certificate is set."""

    name = "grpc"

    def __init__(self, core: InferenceCore, config: ServerConfig) -> None:
        super().__init__()
        self.core = core
        self.config = config
        self.service = GrpcService(core)
        self.wire = Wire()
        prefix = f"/{SERVICE}/"
        # every method but the inference ones, of both services (the feature service's too)
        self.methods: dict[bytes, tuple] = {path.encode(): (OTHER, cls, fn) for path, (cls, fn) in self.service.paths().items()}
        self.methods[(prefix + "ModelInfer").encode()] = (INFER, pb.ModelInferRequest, None)
        self.methods[(prefix + "ModelStreamInfer").encode()] = (STREAM, pb.ModelInferRequest, None)
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    def ssl_context(self) -> ssl.SSLContext | None:
        cfg = self.config
        if not cfg.tls_cert_file:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 9113 9.2
        ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
        ctx.set_alpn_protocols(["h2"])
        return ctx

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        ctx = self.ssl_context()
        sock = listen_socket(cfg.host, cfg.grpc_port, reuse_port=cfg.workers > 1)
        self._port = sock.getsockname()[1]
        self._server = await loop.create_server(
            lambda: GrpcConnection(self), sock=sock, ssl=ctx, ssl_handshake_timeout=10.0 if ctx else None
        )

    async def stop(self, grace: float) -> None:
        """Stop accepting; GOAWAY on every connection; calls in flight finish (open streams once
        the requests they carry are answered) for up to `grace` seconds; then close the rest."""
        await self.close_connections(grace)


__all__ = ["FastGrpcTransport", "HEAD", "OK", "RESPONSE_HEAD", "TRAILERS_OK", "parse_timeout", "percent_encode", "status_block"]
