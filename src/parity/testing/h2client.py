"""A raw HTTP/2 client for tests: it speaks frames, not requests, so a test can act as a hostile or
broken peer (RFC 9113) as easily as a well-behaved gRPC client.

    with H2Client.connect(server.grpc_url) as c:           # preface + SETTINGS, server SETTINGS read
        c.send_frame(FrameType.PING, 0, 1, b"12345678")    # PING on a stream: not allowed
        assert c.wait_goaway_or_close() == ErrorCode.PROTOCOL_ERROR

    with H2Client.connect(server.grpc_url) as c:
        result = c.unary("ModelInfer", pb.ModelInferRequest(...))
        assert result.grpc_status == 0
        reply = pb.ModelInferResponse.FromString(result.messages[0])

What it does for you, and nothing more:

- `send_frame` writes any frame: any type, flags and stream id, any payload, and a `length`
  field that may disagree with the payload;
- request header blocks are encoded with `hpack.Encoder`, response header blocks (HEADERS and
  CONTINUATION frames) are reassembled and decoded with `hpack.Decoder` as they are read, so the
  decoder's dynamic table stays in step with the server's encoder;
- while reading it ACKs the server's SETTINGS and PINGs, and (unless `auto_window=False`) gives
  back flow-control window for every DATA frame it receives;
- `send_data` respects the server's flow-control windows (it reads WINDOW_UPDATEs while it waits);
  `send_frame` does not, on purpose;
- the state of every stream the server talks about (response headers, DATA, trailers, RST_STREAM)
  is collected in `streams`, and every frame read is kept in `received`, for assertions and for
  messages that say what the server actually did.

Reading never blocks for longer than the timeout asked for: `TimeoutError` when nothing came,
`ConnectionClosed` when the server closed the connection (with the GOAWAY it sent first, if any).
Frames the server must not send (a first frame other than SETTINGS, a header block interrupted by
another frame, a header block that does not decode) raise `ServerViolation`, an AssertionError.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Self

import hpack

__all__ = [
    "GRPC_SERVICE",
    "PREFACE",
    "ConnectionClosed",
    "ErrorCode",
    "Flag",
    "Frame",
    "FrameType",
    "H2Client",
    "ServerViolation",
    "Setting",
    "StreamState",
    "encode_frame",
    "goaway_payload",
    "grpc_message",
    "padded",
    "parse_grpc_messages",
    "priority_payload",
    "rst_stream_payload",
    "settings_payload",
    "window_update_payload",
]  # fmt: skip

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME_SIZE = 16_384
MAX_WINDOW = 2**31 - 1
GRPC_SERVICE = "inference.GRPCInferenceService"


class FrameType(IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


class Flag:
    """Frame flags (one byte); ACK and END_STREAM share a bit, on different frame types."""

    END_STREAM = 0x1
    ACK = 0x1
    END_HEADERS = 0x4
    PADDED = 0x8
    PRIORITY = 0x20


class ErrorCode(IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class Setting(IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


def _name(enum: type[IntEnum], value: int | None) -> str:
    if value is None:
        return "None"
    try:
        return enum(value).name
    except ValueError:
        return f"0x{value:x}"


def error_name(code: int | None) -> str:
    """`ErrorCode` name of a code, or its hex value when it is not a known one."""
    return _name(ErrorCode, code)


# -- frames ---------------------------------------------------------------------------------------------


def encode_frame(
    type: int, flags: int = 0, stream_id: int = 0, payload: bytes = b"", *, length: int | None = None, reserved: bool = False
) -> bytes:
    """One frame on the wire: 9-byte header (24-bit length, type, flags, R bit + 31-bit stream id)
    and the payload.  `length` overrides the length field (it may disagree with the payload: a test
    can lie); `reserved` sets the reserved bit.  Nothing here is validated."""
    n = len(payload) if length is None else length
    if not 0 <= n < 1 << 24:
        raise ValueError(f"a frame length field has 24 bits: {n}")
    sid = (stream_id & 0x7FFF_FFFF) | (0x8000_0000 if reserved else 0)
    return struct.pack(">I", n)[1:] + struct.pack(">BBI", type & 0xFF, flags & 0xFF, sid) + payload


def settings_payload(settings: Mapping[int, int] | Iterable[tuple[int, int]] = ()) -> bytes:
    """SETTINGS payload: (identifier, value) pairs as 16-bit id + 32-bit value; order is kept,
    repetitions too (a list of pairs may repeat an id)."""
    pairs = settings.items() if isinstance(settings, Mapping) else settings
    return b"".join(struct.pack(">HI", int(k), v & 0xFFFF_FFFF) for k, v in pairs)


def window_update_payload(increment: int, *, reserved: bool = False) -> bytes:
    return struct.pack(">I", (increment & 0x7FFF_FFFF) | (0x8000_0000 if reserved else 0))


def rst_stream_payload(code: int) -> bytes:
    return struct.pack(">I", code)


def goaway_payload(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return struct.pack(">II", last_stream_id & 0x7FFF_FFFF, code) + debug


def priority_payload(depends_on: int = 0, weight: int = 16, exclusive: bool = False) -> bytes:
    """The 5 bytes of a PRIORITY frame or of a HEADERS frame's priority fields (weight 1..256)."""
    return struct.pack(">IB", (depends_on & 0x7FFF_FFFF) | (0x8000_0000 if exclusive else 0), (weight - 1) & 0xFF)


def padded(payload: bytes, pad_length: int, *, pad_byte: int = 0) -> bytes:
    """A PADDED frame's payload: pad-length byte, the payload, `pad_length` padding bytes.  (For
    HEADERS with PRIORITY the priority fields belong inside `payload`, before the block.)"""
    return bytes([pad_length]) + payload + bytes([pad_byte]) * pad_length


@dataclass
class Frame:
    """A frame read from the server.  `headers` is set on the frame that ended a header block
    (END_HEADERS on HEADERS or CONTINUATION): the whole block, decoded."""

    type: int
    flags: int
    stream_id: int
    payload: bytes
    headers: list[tuple[str, str]] | None = None

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    @property
    def type_name(self) -> str:
        return _name(FrameType, self.type)

    @property
    def error_code(self) -> int | None:
        """RST_STREAM's or GOAWAY's error code."""
        if self.type == FrameType.RST_STREAM and len(self.payload) >= 4:
            return struct.unpack_from(">I", self.payload)[0]
        if self.type == FrameType.GOAWAY and len(self.payload) >= 8:
            return struct.unpack_from(">I", self.payload, 4)[0]
        return None

    @property
    def last_stream_id(self) -> int | None:
        if self.type == FrameType.GOAWAY and len(self.payload) >= 4:
            return struct.unpack_from(">I", self.payload)[0] & 0x7FFF_FFFF
        return None

    @property
    def debug_data(self) -> bytes:
        return self.payload[8:] if self.type == FrameType.GOAWAY else b""

    @property
    def increment(self) -> int | None:
        if self.type == FrameType.WINDOW_UPDATE and len(self.payload) == 4:
            return struct.unpack(">I", self.payload)[0] & 0x7FFF_FFFF
        return None

    @property
    def settings(self) -> list[tuple[int, int]]:
        if self.type != FrameType.SETTINGS:
            return []
        p = self.payload
        return [struct.unpack_from(">HI", p, i) for i in range(0, len(p) - len(p) % 6, 6)]

    def __str__(self) -> str:
        t, parts = self.type, [f"stream={self.stream_id}"]
        if self.flags:
            parts.append(f"flags=0x{self.flags:02x}")
        if t in (FrameType.RST_STREAM, FrameType.GOAWAY):
            parts.append(error_name(self.error_code))
        if t == FrameType.GOAWAY:
            parts.append(f"last={self.last_stream_id}")
            if self.debug_data:
                parts.append(repr(self.debug_data[:200]))
        elif t == FrameType.WINDOW_UPDATE:
            parts.append(f"+{self.increment}")
        elif t == FrameType.SETTINGS:
            parts.append(", ".join(f"{_name(Setting, k)}={v}" for k, v in self.settings))
        elif t == FrameType.PING:
            parts.append(self.payload.hex())
        elif t == FrameType.DATA:
            parts.append(f"{len(self.payload)} bytes")
        if self.headers is not None:
            parts.append(repr(self.headers))
        return f"{self.type_name}({', '.join(parts)})"


# -- gRPC messages ----------------------------------------------------------------------------------------


def grpc_message(body: bytes, *, compressed: bool = False, length: int | None = None) -> bytes:
    """A length-prefixed gRPC message: compressed flag byte, 4-byte big-endian length, the bytes.
    `length` overrides the length prefix."""
    return struct.pack(">BI", 1 if compressed else 0, len(body) if length is None else length) + body


def parse_grpc_messages(data: bytes) -> list[bytes]:
    """Split a stream's DATA bytes into gRPC messages; a truncated tail raises ValueError."""
    out, i = [], 0
    while i < len(data):
        if len(data) - i < 5:
            raise ValueError(f"{len(data) - i} trailing bytes are not a gRPC message prefix")
        flag, n = struct.unpack_from(">BI", data, i)
        if flag:
            raise ValueError("compressed gRPC message (this client asks for none)")
        if len(data) - i - 5 < n:
            raise ValueError(f"gRPC message of {n} bytes truncated to {len(data) - i - 5}")
        out.append(bytes(data[i + 5 : i + 5 + n]))
        i += 5 + n
    return out


# -- errors -----------------------------------------------------------------------------------------------


class ConnectionClosed(Exception):
    """The server closed the connection (EOF or reset) while we were reading or writing.
    `goaway` is the last GOAWAY frame it sent before, if any."""

    def __init__(self, goaway: Frame | None, reset: bool = False, detail: str = ""):
        self.goaway = goaway
        self.reset = reset
        how = "reset" if reset else "closed"
        ga = f" after {goaway}" if goaway is not None else " without a GOAWAY"
        super().__init__(f"connection {how} by the server{ga}{': ' + detail if detail else ''}")

    @property
    def error_code(self) -> int | None:
        return None if self.goaway is None else self.goaway.error_code


class ServerViolation(AssertionError):
    """The server sent something RFC 9113 does not allow it to send."""


# -- streams ----------------------------------------------------------------------------------------------


@dataclass
class StreamState:
    """What the server sent on one stream, and our side's send window for it."""

    stream_id: int
    headers: list[tuple[str, str]] | None = None  # the first header block (the response headers)
    trailers: list[tuple[str, str]] | None = None  # a second header block
    data: bytearray = field(default_factory=bytearray)  # DATA payloads, padding removed
    data_frames: int = 0
    ended: bool = False  # the server sent END_STREAM
    reset_code: int | None = None  # the server sent RST_STREAM with this code
    send_window: int = DEFAULT_WINDOW  # how much DATA we may still send on it

    @property
    def closed(self) -> bool:
        return self.ended or self.reset_code is not None

    def _field(self, name: str, blocks) -> str | None:
        for block in blocks:
            for k, v in block or ():
                if k == name:
                    return v
        return None

    @property
    def status(self) -> int | None:
        """The HTTP :status of the response headers."""
        v = self._field(":status", [self.headers])
        return None if v is None else int(v)

    @property
    def grpc_status(self) -> int | None:
        """grpc-status from the trailers, or from the headers of a trailers-only response."""
        blocks = [self.trailers] if self.trailers is not None else [self.headers]
        v = self._field("grpc-status", blocks)
        return None if v is None else int(v)

    @property
    def grpc_message(self) -> str | None:
        blocks = [self.trailers] if self.trailers is not None else [self.headers]
        return self._field("grpc-message", blocks)

    @property
    def messages(self) -> list[bytes]:
        return parse_grpc_messages(bytes(self.data))

    def __str__(self) -> str:
        if self.reset_code is not None:
            end = f"RST_STREAM {error_name(self.reset_code)}"
        else:
            end = "ended" if self.ended else "open"
        return f"stream {self.stream_id}: {end}, headers={self.headers}, {len(self.data)} data bytes, trailers={self.trailers}"


# -- the client -------------------------------------------------------------------------------------------


def _address(addr: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(addr, tuple):
        return addr
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class H2Client:
    """One plain-TCP HTTP/2 connection (prior knowledge, no TLS), driven by hand.

    `settings` are the SETTINGS the client sends after the preface (ENABLE_PUSH=0 unless given).
    `auto_window`: give back window for every DATA frame received (WINDOW_UPDATE on the stream and
    the connection); off, the server can send only what the windows we advertised allow.
    `rcvbuf`: a small SO_RCVBUF makes a client that stops reading push back on the server sooner.
    """

    def __init__(self, addr: str | tuple[str, int], *, timeout: float = 5.0, auto_window: bool = True, rcvbuf: int | None = None):
        self.host, self.port = _address(addr)
        self.timeout = timeout
        self.auto_window = auto_window
        self.authority = f"{self.host}:{self.port}"
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            sock.connect((self.host, self.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.server_settings: dict[int, int] = {}  # the server's SETTINGS, as received so far
        self.got_server_settings = False
        self.settings_acks = 0  # SETTINGS ACKs the server sent
        self.local_settings: dict[int, int] = {}  # what we sent (our last SETTINGS)
        self.send_window = DEFAULT_WINDOW  # connection-level window for DATA we send
        self.streams: dict[int, StreamState] = {}
        self.received: list[Frame] = []  # every frame read, in order
        self.goaway: Frame | None = None  # the last GOAWAY the server sent
        self.closed = False  # we saw EOF / reset (or closed it)
        self.next_stream_id = 1
        self._buf = bytearray()
        self._block: list = []  # header block being reassembled: [first frame, fragments...]
        self.bytes_sent = 0

    # -- setup ---------------------------------------------------------------------------------------

    @classmethod
    def connect(
        cls, addr: str | tuple[str, int], *, settings: Mapping[int, int] | None = None, handshake: bool = True, **kw
    ) -> H2Client:
        """Connect; with `handshake`, send the preface and our SETTINGS and read until the server's
        SETTINGS arrived (and are ACKed)."""
        c = cls(addr, **kw)
        try:
            if handshake:
                c.handshake(settings)
        except BaseException:
            c.close()
            raise
        return c

    def handshake(self, settings: Mapping[int, int] | None = None, timeout: float | None = None) -> dict[int, int]:
        s = {Setting.ENABLE_PUSH: 0}
        s.update(settings or {})
        self.send(PREFACE)
        self.send_settings(s)
        self.read_until(lambda f: self.got_server_settings, timeout)
        return self.server_settings

    def close(self) -> None:
        if not self.closed:
            self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what the server allows ----------------------------------------------------------------------

    @property
    def max_frame_size(self) -> int:
        """The largest frame payload the server accepts (its SETTINGS_MAX_FRAME_SIZE)."""
        return self.server_settings.get(Setting.MAX_FRAME_SIZE, DEFAULT_MAX_FRAME_SIZE)

    @property
    def initial_window(self) -> int:
        return self.server_settings.get(Setting.INITIAL_WINDOW_SIZE, DEFAULT_WINDOW)

    @property
    def max_concurrent_streams(self) -> int | None:
        return self.server_settings.get(Setting.MAX_CONCURRENT_STREAMS)

    def stream(self, stream_id: int) -> StreamState:
        s = self.streams.get(stream_id)
        if s is None:
            s = self.streams[stream_id] = StreamState(stream_id, send_window=self.initial_window)
        return s

    def new_stream_id(self) -> int:
        sid = self.next_stream_id
        self.next_stream_id += 2
        return sid

    # -- writing -------------------------------------------------------------------------------------

    def send(self, data: bytes, timeout: float | None = None) -> None:
        """Write raw bytes (all of them, or TimeoutError / ConnectionClosed)."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise TimeoutError(f"the server did not take {len(data)} bytes in time") from None
        except (BrokenPipeError, ConnectionResetError) as e:
            self._salvage()
            raise ConnectionClosed(
                self.goaway, reset=isinstance(e, ConnectionResetError), detail=f"while sending ({e})"
            ) from None
        self.bytes_sent += len(data)

    def try_send(self, data: bytes, timeout: float) -> int:
        """Write as much of `data` as the socket takes within `timeout`; returns the count (a server
        that stops reading makes this return short).  ConnectionClosed if the server went away."""
        deadline = time.monotonic() + timeout
        view, sent = memoryview(data), 0
        self.sock.setblocking(False)
        try:
            while sent < len(data):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                _, w, _ = select.select([], [self.sock], [], left)
                if not w:
                    break
                try:
                    sent += self.sock.send(view[sent:])
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError) as e:
                    self.sock.setblocking(True)
                    self._salvage()
                    raise ConnectionClosed(
                        self.goaway, reset=isinstance(e, ConnectionResetError), detail=f"while sending ({e})"
                    ) from None
        finally:
            self.sock.setblocking(True)
            self.bytes_sent += sent
        return sent

    def _salvage(self) -> None:
        """The server went away while we were writing: read (and process) whatever it sent before,
        so that its GOAWAY is not lost, then mark the connection closed."""
        try:
            while True:
                self.read_frame(0.2)
        except (ConnectionClosed, TimeoutError, ServerViolation):
            pass
        self.closed = True

    def send_frame(
        self,
        type: int,
        flags: int = 0,
        stream_id: int = 0,
        payload: bytes = b"",
        *,
        length: int | None = None,
        reserved: bool = False,
    ) -> None:
        """Write one frame exactly as given (see `encode_frame`); no checks, no flow control."""
        self.send(encode_frame(type, flags, stream_id, payload, length=length, reserved=reserved))

    def send_settings(self, settings: Mapping[int, int] | Iterable[tuple[int, int]] = (), *, ack: bool = False) -> None:
        pairs = list(settings.items() if isinstance(settings, Mapping) else settings)
        if not ack:
            for k, v in pairs:
                self.local_settings[int(k)] = v
                if k == Setting.HEADER_TABLE_SIZE:
                    self.decoder.max_allowed_table_size = v
        self.send_frame(FrameType.SETTINGS, Flag.ACK if ack else 0, 0, settings_payload(pairs))

    def ping(self, data: bytes = b"\0" * 8, *, ack: bool = False) -> None:
        self.send_frame(FrameType.PING, Flag.ACK if ack else 0, 0, data)

    def window_update(self, stream_id: int, increment: int) -> None:
        self.send_frame(FrameType.WINDOW_UPDATE, 0, stream_id, window_update_payload(increment))

    def rst_stream(self, stream_id: int, code: int = ErrorCode.CANCEL) -> None:
        self.send_frame(FrameType.RST_STREAM, 0, stream_id, rst_stream_payload(code))

    def send_goaway(self, last_stream_id: int = 0, code: int = ErrorCode.NO_ERROR, debug: bytes = b"") -> None:
        self.send_frame(FrameType.GOAWAY, 0, 0, goaway_payload(last_stream_id, code, debug))

    # -- header blocks -------------------------------------------------------------------------------

    def grpc_headers(
        self,
        method: str,
        *,
        metadata: Iterable[tuple[str, str]] = (),
        content_type: str | None = "application/grpc",
        path: str | None = None,
    ) -> list[tuple[str, str]]:
        """Request headers of a gRPC call: `method` is a GRPCInferenceService method name
        ("ModelInfer") or a full path ("/pkg.Service/Method"); `content_type` None leaves it out."""
        if path is None:
            path = method if method.startswith("/") else f"/{GRPC_SERVICE}/{method}"
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", self.authority)]
        if content_type is not None:
            headers.append(("content-type", content_type))
        return [*headers, ("te", "trailers"), ("user-agent", "parity-h2client"), *metadata]

    def encode_headers(self, headers: Iterable[tuple[str, str]], *, huffman: bool = True) -> bytes:
        """An HPACK header block, from our encoder (whose dynamic table the server's decoder
        follows: every block encoded must reach the server, in order)."""
        return self.encoder.encode(list(headers), huffman=huffman)

    def send_headers(
        self,
        stream_id: int,
        headers: Iterable[tuple[str, str]] | bytes,
        *,
        end_stream: bool = False,
        fragment_size: int | None = None,
        pad_length: int | None = None,
        priority: bytes | None = None,
        end_headers: bool = True,
    ) -> None:
        """A header block on HEADERS (+ CONTINUATION frames of at most `fragment_size` bytes each,
        default the server's max frame size).  `headers` is a header list (encoded here) or an
        encoded block.  `pad_length` pads the HEADERS frame, `priority` (see `priority_payload`)
        sets the PRIORITY flag; `end_headers=False` leaves the block unfinished (a test goes on
        with `send_frame(FrameType.CONTINUATION, ...)`)."""
        block = headers if isinstance(headers, (bytes, bytearray)) else self.encode_headers(headers)
        size = fragment_size or self.max_frame_size
        extra = (0 if pad_length is None else 1 + pad_length) + (0 if priority is None else 5)
        first = max(0, min(len(block), size - extra))
        fragments = [block[:first]] + [block[i : i + size] for i in range(first, len(block), size)]
        flags = (Flag.END_STREAM if end_stream else 0) | (Flag.PRIORITY if priority is not None else 0)
        payload = (priority or b"") + fragments[0]
        if pad_length is not None:
            flags |= Flag.PADDED
            payload = padded(payload, pad_length)
        if len(fragments) == 1 and end_headers:
            flags |= Flag.END_HEADERS
        self.stream(stream_id)
        frames = [encode_frame(FrameType.HEADERS, flags, stream_id, payload)]
        for i, frag in enumerate(fragments[1:], 2):
            last = i == len(fragments) and end_headers
            frames.append(encode_frame(FrameType.CONTINUATION, Flag.END_HEADERS if last else 0, stream_id, frag))
        self.send(b"".join(frames))
        if stream_id >= self.next_stream_id and stream_id % 2:
            self.next_stream_id = stream_id + 2

    # -- DATA ----------------------------------------------------------------------------------------

    def send_data(
        self,
        stream_id: int,
        data: bytes,
        *,
        end_stream: bool = False,
        frame_size: int | None = None,
        pad_length: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """DATA frames (at most `frame_size` payload bytes each, padding included), respecting the
        server's connection and stream windows: waits for WINDOW_UPDATEs (reading frames) while a
        window is closed.  An empty `data` with `end_stream` sends one empty DATA frame."""
        size = min(frame_size or self.max_frame_size, self.max_frame_size)
        overhead = 0 if pad_length is None else 1 + pad_length
        if overhead >= size:
            raise ValueError("padding leaves no room for data")
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        st = self.stream(stream_id)
        view, i = memoryview(data), 0
        while True:
            want = min(len(data) - i, size - overhead)
            while want + overhead > min(self.send_window, st.send_window) and want + overhead > 0:
                if st.closed:
                    raise ConnectionError(f"stream {stream_id} closed by the server while sending: {st}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no flow-control window to send on stream {stream_id} (connection {self.send_window}, stream {st.send_window})"
                    )
                self.read_frame(left)
            chunk = bytes(view[i : i + want])
            i += want
            last = i >= len(data)
            flags = Flag.END_STREAM if (last and end_stream) else 0
            payload = chunk
            if pad_length is not None:
                flags |= Flag.PADDED
                payload = padded(chunk, pad_length)
            self.send_frame(FrameType.DATA, flags, stream_id, payload)
            self.send_window -= len(payload)
            st.send_window -= len(payload)
            if last:
                return

    # -- reading -------------------------------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        """Read at least one more chunk from the socket (or raise)."""
        left = deadline - time.monotonic()
        if left <= 0:  # out of time: only what has already arrived
            if not select.select([self.sock], [], [], 0)[0]:
                raise TimeoutError("nothing from the server in time")
            left = 0.001
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(1 << 16)
        except TimeoutError:
            raise TimeoutError("nothing from the server in time") from None
        except ConnectionResetError:
            self.closed = True
            raise ConnectionClosed(self.goaway, reset=True) from None
        except OSError as e:
            self.closed = True
            raise ConnectionClosed(self.goaway, detail=str(e)) from None
        if not chunk:
            self.closed = True
            raise ConnectionClosed(self.goaway)
        self._buf += chunk

    def read_frame(self, timeout: float | None = None) -> Frame:
        """The next frame from the server, processed (see the module docstring)."""
        if self.closed and len(self._buf) < 9:
            raise ConnectionClosed(self.goaway)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self._buf) < 9:
            self._fill(deadline)
        n = int.from_bytes(self._buf[:3], "big")
        while len(self._buf) < 9 + n:
            self._fill(deadline)
        type, flags, sid = struct.unpack_from(">BBI", self._buf, 3)
        frame = Frame(type, flags, sid & 0x7FFF_FFFF, bytes(self._buf[9 : 9 + n]))
        del self._buf[: 9 + n]
        self.received.append(frame)
        self._process(frame)
        return frame

    def read_until(self, predicate: Callable[[Frame], bool], timeout: float | None = None) -> Frame:
        """Read frames until one satisfies `predicate` (which may also look at this client's state)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            f = self.read_frame(max(0.0, deadline - time.monotonic()))
            if predicate(f):
                return f

    def drain(self, timeout: float = 0.2) -> list[Frame]:
        """Every frame that arrives within `timeout` (stops early on close)."""
        out, deadline = [], time.monotonic() + timeout
        try:
            while True:
                out.append(self.read_frame(max(0.0, deadline - time.monotonic())))
        except (TimeoutError, ConnectionClosed):
            return out

    def _process(self, f: Frame) -> None:
        first = len(self.received) == 1
        if first and not (f.type == FrameType.SETTINGS and not f.has(Flag.ACK)):
            raise ServerViolation(f"the server's first frame must be SETTINGS, not {f}")
        if self._block and f.type != FrameType.CONTINUATION:
            raise ServerViolation(f"{f} interrupted a header block on stream {self._block[0].stream_id}")
        t = f.type
        if t == FrameType.SETTINGS:
            if f.has(Flag.ACK):
                self.settings_acks += 1
            else:
                for k, v in f.settings:
                    old = self.initial_window
                    self.server_settings[k] = v
                    if k == Setting.INITIAL_WINDOW_SIZE:
                        for s in self.streams.values():
                            s.send_window += v - old
                    elif k == Setting.HEADER_TABLE_SIZE:
                        self.encoder.header_table_size = v
                self.got_server_settings = True
                self._quietly(encode_frame(FrameType.SETTINGS, Flag.ACK, 0))
        elif t == FrameType.PING:
            if not f.has(Flag.ACK):
                self._quietly(encode_frame(FrameType.PING, Flag.ACK, 0, f.payload))
        elif t == FrameType.GOAWAY:
            self.goaway = f
        elif t == FrameType.WINDOW_UPDATE:
            inc = f.increment or 0
            if f.stream_id == 0:
                self.send_window += inc
            else:
                self.stream(f.stream_id).send_window += inc
        elif t == FrameType.RST_STREAM:
            if f.stream_id:
                self.stream(f.stream_id).reset_code = f.error_code
        elif t == FrameType.DATA:
            st = self.stream(f.stream_id)
            body = f.payload
            if f.has(Flag.PADDED):
                if not body or body[0] >= len(body):
                    raise ServerViolation(f"bad padding in {f}")
                body = body[1 : len(body) - body[0]]
            st.data += body
            st.data_frames += 1
            if f.has(Flag.END_STREAM):
                st.ended = True
            if self.auto_window and f.payload:
                n = len(f.payload)
                upd = encode_frame(FrameType.WINDOW_UPDATE, 0, 0, window_update_payload(n))
                if not st.closed:
                    upd += encode_frame(FrameType.WINDOW_UPDATE, 0, f.stream_id, window_update_payload(n))
                self._quietly(upd)
        elif t in (FrameType.HEADERS, FrameType.CONTINUATION):
            self._header_fragment(f)
        elif t == FrameType.PUSH_PROMISE:
            raise ServerViolation(f"the server sent {f} although we disabled push")

    def _header_fragment(self, f: Frame) -> None:
        if f.type == FrameType.HEADERS:
            p = f.payload
            pad = 0
            if f.has(Flag.PADDED):
                pad = p[0]
                p = p[1:]
            if f.has(Flag.PRIORITY):
                p = p[5:]
            if pad > len(p):
                raise ServerViolation(f"bad padding in {f}")
            self._block = [f, p[: len(p) - pad]]
        else:
            if not self._block or self._block[0].stream_id != f.stream_id:
                raise ServerViolation(f"{f} continues no header block")
            self._block.append(f.payload)
        if not f.has(Flag.END_HEADERS):
            return
        first, *fragments = self._block
        self._block = []
        try:
            # raw: a field value may hold any octet but NUL, CR and LF, not only UTF-8 (RFC 9113 8.2.1)
            raw = self.decoder.decode(b"".join(fragments), raw=True)
            f.headers = [(k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")) for k, v in raw]
        except hpack.HPACKError as e:
            raise ServerViolation(f"the server's header block on stream {f.stream_id} does not decode: {e!r}") from None
        st = self.stream(f.stream_id)
        if st.headers is None:
            st.headers = f.headers
        else:
            st.trailers = f.headers
        if first.has(Flag.END_STREAM):
            st.ended = True

    def _quietly(self, data: bytes) -> None:
        """An automatic answer (ACK, WINDOW_UPDATE): a server that already went away is not an error here."""
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(data)
            self.bytes_sent += len(data)
        except OSError:
            pass

    # -- outcomes ------------------------------------------------------------------------------------

    def wait_goaway_or_close(self, timeout: float = 5.0) -> int | None:
        """Read until the server sends a GOAWAY with an error code or closes the connection; returns
        the GOAWAY's error code (the last GOAWAY's when it closes after GOAWAY NO_ERROR), None when it
        closed without one.  TimeoutError when it did neither within `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                f = self.read_frame(max(0.0, deadline - time.monotonic()))
                if f.type == FrameType.GOAWAY and f.error_code != ErrorCode.NO_ERROR:
                    return f.error_code
        except ConnectionClosed as e:
            return e.error_code
        except TimeoutError:
            raise TimeoutError(f"no GOAWAY and no close within {timeout}s; frames read: {self.describe()}") from None

    def wait_stream(self, stream_id: int, timeout: float | None = None) -> StreamState:
        """Read until the server ended or reset the stream."""
        st = self.stream(stream_id)
        if not st.closed:
            self.read_until(lambda f: st.closed, timeout)
        return st

    def ping_pong(self, data: bytes = b"parity!!", timeout: float | None = None) -> Frame:
        """Send a PING and read until its ACK (proof that the connection is still served)."""
        self.ping(data)
        return self.read_until(lambda f: f.type == FrameType.PING and f.has(Flag.ACK) and f.payload == data, timeout)

    def describe(self, last: int = 20) -> str:
        """The last frames read, for assertion messages."""
        frames = self.received[-last:]
        more = f"... ({len(self.received) - last} earlier) " if len(self.received) > last else ""
        return more + (", ".join(str(f) for f in frames) or "none")

    # -- gRPC ----------------------------------------------------------------------------------------

    def start_call(
        self,
        method: str,
        request=None,
        *,
        stream_id: int | None = None,
        metadata: Iterable[tuple[str, str]] = (),
        content_type: str | None = "application/grpc",
        end_stream: bool = True,
    ) -> int:
        """Open a stream with a gRPC call: HEADERS, then the request message (a protobuf message or
        its bytes) as DATA with END_STREAM.  Returns the stream id; see `wait_stream`."""
        sid = self.new_stream_id() if stream_id is None else stream_id
        hdrs = self.grpc_headers(method, metadata=metadata, content_type=content_type)
        if request is None:
            self.send_headers(sid, hdrs, end_stream=end_stream)
            return sid
        body = request if isinstance(request, (bytes, bytearray)) else request.SerializeToString()
        self.send_headers(sid, hdrs)
        self.send_data(sid, grpc_message(bytes(body)), end_stream=end_stream)
        return sid

    def unary(self, method: str, request, *, timeout: float | None = None, **kw) -> StreamState:
        """A whole unary gRPC call on a new stream; the result has status, grpc_status, messages."""
        return self.wait_stream(self.start_call(method, request, **kw), timeout)
