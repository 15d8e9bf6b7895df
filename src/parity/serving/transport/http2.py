"""A lean HTTP/2 server connection (RFC 9113) for the fast gRPC transport.

Frames are parsed by hand over the subset a server needs; header blocks are decoded with the
`hpack` package, and ours are written as HPACK literals that never touch the dynamic table, so
the common answers are constant bytes.  What the connection does:

- the connection preface, SETTINGS and their acknowledgement, PING, WINDOW_UPDATE, GOAWAY (sent
  on shutdown, with in-flight streams finished first), RST_STREAM in both directions;
- flow control in both directions, per stream and per connection.  Inbound: a stream's window is
  replenished as its data is consumed, the connection's only while the data held in unfinished
  messages stays under a cap.  Outbound: DATA never exceeds the peer's windows; what does not fit
  waits per stream, and while too much waits, new streams are refused (REFUSED_STREAM, which
  clients retry) instead of taking more work.  A peer that stops reading the socket altogether
  stops being read (the socket's buffer is the bound);
- HEADERS with CONTINUATION, padding and priority fields; limits on concurrent streams, on the
  encoded header block and on the decoded header list;
- every protocol violation is answered as RFC 9113 says: a stream error (RST_STREAM) where the
  connection can go on, otherwise a connection error (GOAWAY with the code, then close).

Subclasses supply the application through `new_stream`, `on_headers`, `on_data`, `on_reset`
and `on_closed`, and answer with `send_headers`, `send_data`, `send_trailers` and
`send_response`.  Output is gathered and written once per event-loop iteration.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque

import hpack
import hpack.exceptions

log = logging.getLogger("parity.http2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB
# settings
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_FRAME = 16384
MAX_FRAME_LIMIT = 2**24 - 1

# Our receive windows: a stream may send this much before it needs our WINDOW_UPDATE; the
# connection as a whole this much.
STREAM_WINDOW = 1 << 20
CONN_WINDOW = 16 << 20
# The largest frame we accept.
MAX_FRAME_IN = 1 << 20
# Frames handled per read before the rest wait for the next event-loop iteration.
FRAMES_PER_TURN = 512
# How long a closing connection waits for the peer to close its side.
LINGER_S = 2.0
# After our GOAWAY, when the last stream is answered: how long the connection stays open for the
# peer to read the final frames and close it itself (clients do, once GOAWAY came and nothing is
# open).  Closing first races the client's reading of the last status: grpc-core reports a call
# whose trailers arrived just before the socket closed as "Stream removed (Socket closed)".
FINAL_GRACE_S = 1.0
# ... and how much it reads (and drops) meanwhile before it gives up on the peer.
LINGER_BYTES = 256 << 10

_HEAD = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream id
_U32 = struct.Struct(">L")
_GOAWAY = struct.Struct(">LL")
_SETTING = struct.Struct(">HL")


# type and flags bytes of the frames every answer has
_HEADERS_END_HEADERS = bytes([HEADERS, END_HEADERS])
_HEADERS_END_STREAM = bytes([HEADERS, END_HEADERS | END_STREAM])
_DATA_NO_FLAGS = bytes([DATA, 0])


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEAD.pack(n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def frame_head(ftype: int, flags: int, sid: int, length: int) -> bytes:
    return _HEAD.pack(length >> 16, length & 0xFFFF, ftype, flags, sid)


# -- HPACK output: literals without indexing (RFC 7541 6.2.2), which leave the peer's dynamic
# table alone, so a block can be built once and sent on any connection at any time.


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field with a literal name and value, not indexed."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def literal_indexed_name(index: int, value: bytes) -> bytes:
    """A header field whose name is entry `index` of the static table, value literal, not indexed."""
    return hpack_int(index, 4) + hpack_int(len(value), 7) + value


STATUS_200 = b"\x88"  # static table entry 8: ":status: 200"


def status_field(status: int) -> bytes:
    if status == 200:
        return STATUS_200
    return literal_indexed_name(8, str(status).encode())


class ConnectionError_(Exception):  # noqa: N801 - not the builtin ConnectionError
    """A connection error: GOAWAY with `code`, then close."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class H2Stream:
    """One stream's HTTP/2 state; subclasses add the application's."""

    __slots__ = (
        "id", "recv_window", "unacked", "send_window", "remote_closed", "closed", "headers_sent",
        "outq", "out_bytes", "trailers",
    )  # fmt: skip

    def __init__(self, sid: int, send_window: int):
        self.id = sid
        self.recv_window = STREAM_WINDOW  # what the peer may still send us
        self.unacked = 0  # consumed since our last WINDOW_UPDATE
        self.send_window = send_window  # what we may still send
        self.remote_closed = False  # the peer sent END_STREAM
        self.closed = False  # we ended it (END_STREAM or RST_STREAM) or the peer reset it
        self.headers_sent = False
        self.outq: deque | None = None  # DATA waiting for window: memoryviews
        self.out_bytes = 0
        self.trailers: bytes | None = None  # trailers waiting behind queued DATA


class H2Connection(asyncio.Protocol):
    """The HTTP/2 server side of one connection; see the module docstring."""

    # Consumed inbound bytes held in unfinished messages above which the connection window is
    # no longer replenished (so many streams together cannot make us buffer without bound).
    max_buffered_in = 256 << 20
    # Outbound DATA waiting for the peer's flow-control window above which new streams are
    # refused.
    max_held_out = 64 << 20

    def __init__(self, *, max_concurrent_streams: int = 4096, max_header_list_size: int = 16384, max_message: int = 64 << 20):
        self.loop: asyncio.AbstractEventLoop | None = None
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.max_streams = max_concurrent_streams
        self.max_buffered_in = max(self.max_buffered_in, 4 * max_message)
        self.max_header_list = max_header_list_size  # soft: the stream is refused
        self.hard_header_list = 4 * max_header_list_size  # hard: the connection is closed
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = self.hard_header_list
        self.decoder.max_allowed_table_size = 4096
        # Header blocks made only of indexed fields leave the dynamic table as it is, so their
        # decoding can be reused until a block that may change the table arrives.
        self._block_cache: dict[bytes, tuple] = {}
        self._buf = bytearray()
        self._need = len(PREFACE)
        self._preface = False
        self._settings_seen = False
        self._cont: list | None = None  # [stream id, flags, [fragments], total] while CONTINUATIONs are due
        self.last_sid = 0  # highest stream id the peer opened
        # the peer's settings
        self.peer_window = DEFAULT_WINDOW  # SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_max_frame = DEFAULT_FRAME
        # windows of the connection
        self.send_window = DEFAULT_WINDOW
        self.recv_window = CONN_WINDOW
        self.conn_unacked = 0
        self.buffered_in = 0  # bytes held in unfinished messages (subclasses keep it)
        self.held_out = 0  # DATA bytes waiting for window
        self._blocked: dict[int, H2Stream] = {}  # streams with DATA waiting for window
        self._acks: set[H2Stream] = set()  # streams owed a WINDOW_UPDATE
        self._out: list = []
        self._flush_scheduled = False
        self.write_paused = False
        self.read_paused = False
        self._yielding = False  # frames of a read wait for the next turn
        self.goaway_sent = False
        self.draining = False
        self._final_timer: asyncio.TimerHandle | None = None  # see FINAL_GRACE_S
        self.closed = False
        self._discarded = 0
        self._unfinished: dict[int, None] = {}  # streams we ended while the peer was still sending

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        settings = (
            _SETTING.pack(SETTINGS_MAX_CONCURRENT_STREAMS, self.max_streams)
            + _SETTING.pack(SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW)
            + _SETTING.pack(SETTINGS_MAX_FRAME_SIZE, MAX_FRAME_IN)
            + _SETTING.pack(SETTINGS_MAX_HEADER_LIST_SIZE, self.max_header_list)
            + _SETTING.pack(SETTINGS_ENABLE_PUSH, 0)
        )
        self._write(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONN_WINDOW - DEFAULT_WINDOW)))
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:  # lingering after our last frames: dropped, up to a bound
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES and self.transport is not None:
                self.transport.abort()
            return
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                if not self._preface and not PREFACE.startswith(buf):
                    self.connection_error(PROTOCOL_ERROR, "not an HTTP/2 connection preface; this port speaks gRPC (HTTP/2)")
                return
            data = bytes(buf)
            buf.clear()
        elif len(data) < self._need:
            if not self._preface and not PREFACE.startswith(data):
                self.connection_error(PROTOCOL_ERROR, "not an HTTP/2 connection preface; this port speaks gRPC (HTTP/2)")
                return
            buf += data
            return
        try:
            pos = 0
            if not self._preface:
                if data[:24] != PREFACE:
                    raise ConnectionError_(PROTOCOL_ERROR, "not an HTTP/2 connection preface; this port speaks gRPC (HTTP/2)")
                self._preface = True
                pos = 24
            n = len(data)
            unpack = _HEAD.unpack_from
            budget = FRAMES_PER_TURN
            while n - pos >= 9:
                budget -= 1
                if not budget:
                    # This read holds more frames than one turn takes: the rest wait for the
                    # next loop iteration (and reading pauses), so that other connections and
                    # the batcher get their turns under a flood.
                    buf += data[pos:]
                    self._need = 0
                    self._yielding = True
                    self._update_reading()
                    self.loop.call_soon(self._continue)
                    self._after_input()
                    return
                hi, lo, ftype, flags, sid = unpack(data, pos)
                length = hi << 16 | lo
                end = pos + 9 + length
                if end > n:
                    if length > MAX_FRAME_IN:
                        raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE {MAX_FRAME_IN}")
                    break
                if length > MAX_FRAME_IN:
                    raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE {MAX_FRAME_IN}")
                payload = data[pos + 9 : end]
                pos = end
                sid &= 0x7FFFFFFF
                if not self._settings_seen and ftype != SETTINGS:
                    raise ConnectionError_(PROTOCOL_ERROR, "the client preface must be followed by SETTINGS")
                if self._cont is not None and ftype != CONTINUATION:
                    raise ConnectionError_(PROTOCOL_ERROR, "a header block must be continued by CONTINUATION frames only")
                if ftype == DATA:
                    self._on_data(sid, flags, payload)
                elif ftype == HEADERS:
                    if flags == END_HEADERS | END_STREAM or flags == END_HEADERS:
                        self._header_block(sid, flags, payload)  # no padding, no priority
                    else:
                        self._on_headers_frame(sid, flags, payload)
                elif ftype == WINDOW_UPDATE and length == 4 and not self._blocked:
                    # the common case inline: nothing waits for window, so only the count changes
                    inc = _U32.unpack(payload)[0] & 0x7FFFFFFF
                    if not inc:
                        self._on_other(ftype, sid, flags, payload)
                    elif sid == 0:
                        self.send_window += inc
                        if self.send_window > MAX_WINDOW:
                            raise ConnectionError_(FLOW_CONTROL_ERROR, "connection flow-control window above 2^31-1")
                    else:
                        stream = self.streams.get(sid)
                        if stream is None:
                            if sid > self.last_sid:
                                raise ConnectionError_(PROTOCOL_ERROR, f"WINDOW_UPDATE on stream {sid}, which was never opened")
                        else:
                            stream.send_window += inc
                            if stream.send_window > MAX_WINDOW:
                                self.stream_error(stream, FLOW_CONTROL_ERROR)
                else:
                    self._on_other(ftype, sid, flags, payload)
                if self.closed:
                    return
            if pos < n:
                rest = data[pos:]
                buf += rest
                self._need = 9 + (rest[0] << 16 | rest[1] << 8 | rest[2]) if len(rest) >= 9 else 9
            else:
                self._need = 9
            self._after_input()
        except ConnectionError_ as e:
            self.connection_error(e.code, e.message)

    def eof_received(self):
        return False  # close: HTTP/2 has no half-closed connections

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self._final_timer is not None:
            self._final_timer.cancel()
            self._final_timer = None
        self.transport = None
        streams = list(self.streams.values())
        self.streams.clear()
        self._blocked.clear()
        for s in streams:
            s.closed = True
            self.on_reset(s, CANCEL)
        self.on_closed()

    def pause_writing(self) -> None:
        # The peer is not reading the socket: stop reading it too, so that nothing it sends
        # (pings, settings, requests) can make us write more.
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        """Read while the peer reads our answers and no frames wait for their turn."""
        transport = self.transport
        if transport is None or self.closed:
            return
        stop = self.write_paused or self._yielding
        if stop and not self.read_paused:
            self.read_paused = True
            transport.pause_reading()
        elif not stop and self.read_paused:
            self.read_paused = False
            transport.resume_reading()

    def _continue(self) -> None:
        """Frames left over from a read that used up its turn."""
        self._yielding = False
        if not self.closed:
            self.data_received(b"")
            if not self._yielding:
                self._update_reading()

    # -- frames in -------------------------------------------------------------------------------

    def _on_data(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self.recv_window -= size
        if self.recv_window < 0:
            raise ConnectionError_(FLOW_CONTROL_ERROR, "DATA beyond the connection's flow-control window")
        self.conn_unacked += size
        if flags & PADDED:
            if not size or payload[0] >= size:
                raise ConnectionError_(PROTOCOL_ERROR, "DATA padding is not shorter than the frame")
            payload = payload[1 : size - payload[0]]
        stream = self.streams.get(sid)
        if stream is None:
            if sid > self.last_sid or not sid & 1:
                raise ConnectionError_(PROTOCOL_ERROR, f"DATA on stream {sid}, which was never opened")
            unfinished = self._unfinished
            if sid in unfinished:  # we ended it while the peer was still sending: ignored
                if flags & END_STREAM:
                    del unfinished[sid]
                return
            # the peer had ended it (END_STREAM): nothing more may come (RFC 9113 5.1)
            self._write(frame(RST_STREAM, 0, sid, _U32.pack(STREAM_CLOSED)))
            return
        if stream.remote_closed:
            self.stream_error(stream, STREAM_CLOSED)
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self.stream_error(stream, FLOW_CONTROL_ERROR)
            return
        end = flags & END_STREAM
        if end:
            stream.remote_closed = True
        else:
            stream.unacked += size
            if stream.unacked >= STREAM_WINDOW // 2:
                self._acks.add(stream)
        self.on_data(stream, payload, bool(end))

    def _on_headers_frame(self, sid: int, flags: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on stream 0")
        start = 0
        end = len(payload)
        if flags & PADDED:
            if not end:
                raise ConnectionError_(FRAME_SIZE_ERROR, "padded HEADERS without a pad length")
            pad = payload[0]
            start = 1
            end -= pad
        if flags & PRIORITY_FLAG:
            if start + 5 > end:
                raise ConnectionError_(FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
            if _U32.unpack_from(payload, start)[0] & 0x7FFFFFFF == sid:
                raise ConnectionError_(PROTOCOL_ERROR, f"stream {sid} depends on itself")
            start += 5
        if end < start:
            raise ConnectionError_(PROTOCOL_ERROR, "HEADERS padding is longer than the frame")
        block = payload[start:end]
        if flags & END_HEADERS:
            self._header_block(sid, flags, block)
        else:
            self._cont = [sid, flags, [block], len(block)]
            if len(block) > self.hard_header_list:
                raise ConnectionError_(ENHANCE_YOUR_CALM, "header block larger than the header list limit")

    def _on_continuation(self, sid: int, flags: int, payload: bytes) -> None:
        cont = self._cont
        if cont is None or cont[0] != sid:
            raise ConnectionError_(PROTOCOL_ERROR, "CONTINUATION without a HEADERS frame before it on the same stream")
        cont[2].append(payload)
        cont[3] += len(payload)
        if cont[3] > self.hard_header_list:
            raise ConnectionError_(ENHANCE_YOUR_CALM, f"header block of more than {self.hard_header_list} bytes")
        if flags & END_HEADERS:
            self._cont = None
            self._header_block(sid, cont[1], b"".join(cont[2]))

    def _decode(self, block: bytes) -> tuple:
        """(`parse_headers` of the header list, the list's decoded size per RFC 9113 6.5.2)."""
        cache = self._block_cache
        hit = cache.get(block)
        if hit is not None:
            return hit
        try:
            headers = self.decoder.decode(block, raw=True)
        except hpack.exceptions.OversizedHeaderListError:
            raise ConnectionError_(ENHANCE_YOUR_CALM, f"header list larger than {self.hard_header_list} bytes") from None
        except hpack.exceptions.HPACKError as e:
            raise ConnectionError_(COMPRESSION_ERROR, f"header block cannot be decoded: {e}") from None
        except Exception as e:  # noqa: BLE001 - the decoder must not take the connection down otherwise
            raise ConnectionError_(COMPRESSION_ERROR, f"header block cannot be decoded: {type(e).__name__}") from None
        size = 0
        for name, value in headers:
            size += len(name) + len(value) + 32
        result = (self.parse_headers(headers), size)
        if _indexed_only(block):
            if len(cache) >= 64:
                cache.clear()
            cache[block] = result
        else:
            cache.clear()  # the dynamic table may have changed: cached indices may mean other fields now
        return result

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        headers, size = self._decode(block)  # always: the decoder's state must follow the peer's
        stream = self.streams.get(sid)
        end = bool(flags & END_STREAM)
        if stream is not None:  # trailers from the peer
            if not end:
                self.stream_error(stream, PROTOCOL_ERROR)
                return
            if stream.remote_closed:
                self.stream_error(stream, STREAM_CLOSED)
                return
            stream.remote_closed = True
            self.on_data(stream, b"", True)
            return
        if not sid & 1:
            raise ConnectionError_(PROTOCOL_ERROR, f"client opened stream {sid}: client streams are odd-numbered")
        if sid <= self.last_sid:
            if sid in self._unfinished:  # trailers of a stream we ended early: ignored
                if end:
                    del self._unfinished[sid]
                return
            raise ConnectionError_(STREAM_CLOSED, f"HEADERS on stream {sid}, which is closed (stream ids must increase)")
        self.last_sid = sid
        if self.goaway_sent or len(self.streams) >= self.max_streams or self.held_out > self.max_held_out:
            self._write(frame(RST_STREAM, 0, sid, _U32.pack(REFUSED_STREAM)))
            return
        stream = self.new_stream(sid)
        self.streams[sid] = stream
        stream.remote_closed = end
        self.on_headers(stream, headers, size, end)

    def _on_other(self, ftype: int, sid: int, flags: int, payload: bytes) -> None:
        n = len(payload)
        if ftype == WINDOW_UPDATE:
            if n != 4:
                raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload must be 4 bytes")
            inc = _U32.unpack(payload)[0] & 0x7FFFFFFF
            if sid == 0:
                if inc == 0:
                    raise ConnectionError_(PROTOCOL_ERROR, "connection WINDOW_UPDATE of 0")
                self.send_window += inc
                if self.send_window > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "connection flow-control window above 2^31-1")
                if self._blocked:
                    self._pump()
                return
            stream = self.streams.get(sid)
            if stream is None:
                if sid > self.last_sid:
                    raise ConnectionError_(PROTOCOL_ERROR, f"WINDOW_UPDATE on stream {sid}, which was never opened")
                return
            if inc == 0:
                self.stream_error(stream, PROTOCOL_ERROR)
                return
            stream.send_window += inc
            if stream.send_window > MAX_WINDOW:
                self.stream_error(stream, FLOW_CONTROL_ERROR)
                return
            if stream.outq:
                self._pump()
        elif ftype == CONTINUATION:
            self._on_continuation(sid, flags, payload)
        elif ftype == SETTINGS:
            self._on_settings(sid, flags, payload)
        elif ftype == PING:
            if sid != 0:
                raise ConnectionError_(PROTOCOL_ERROR, "PING on a stream")
            if n != 8:
                raise ConnectionError_(FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif ftype == RST_STREAM:
            if n != 4:
                raise ConnectionError_(FRAME_SIZE_ERROR, "RST_STREAM payload must be 4 bytes")
            if sid == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if sid > self.last_sid:
                raise ConnectionError_(PROTOCOL_ERROR, f"RST_STREAM on stream {sid}, which was never opened")
            stream = self.streams.pop(sid, None)
            if stream is not None:
                self._drop(stream)
                self.on_reset(stream, _U32.unpack(payload)[0])
        elif ftype == PRIORITY:
            if sid == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if n != 5:
                self._write(frame(RST_STREAM, 0, sid, _U32.pack(FRAME_SIZE_ERROR)))
                stream = self.streams.pop(sid, None)
                if stream is not None:
                    self._drop(stream)
                    self.on_reset(stream, FRAME_SIZE_ERROR)
        elif ftype == GOAWAY:
            if sid != 0:
                raise ConnectionError_(PROTOCOL_ERROR, "GOAWAY on a stream")
            if n < 8:
                raise ConnectionError_(FRAME_SIZE_ERROR, "GOAWAY payload must be at least 8 bytes")
            self.draining = True  # the peer opens nothing more; finish what is open, then close
            self._close_if_done()
        elif ftype == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "clients cannot push")
        # other types are extensions we do not know: ignored (RFC 9113 5.5)

    def _on_settings(self, sid: int, flags: int, payload: bytes) -> None:
        if sid != 0:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        n = len(payload)
        if flags & ACK:
            if n:
                raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS acknowledgement with a payload")
            return
        if n % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6 bytes")
        for off in range(0, n, 6):
            key, value = _SETTING.unpack_from(payload, off)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
                delta = value - self.peer_window
                self.peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ConnectionError_(FLOW_CONTROL_ERROR, "a stream's flow-control window went above 2^31-1")
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= MAX_FRAME_LIMIT:
                    raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE outside 16384..16777215")
                self.peer_max_frame = value
            elif key == SETTINGS_ENABLE_PUSH:
                if value > 1:
                    raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH must be 0 or 1")
            elif key == SETTINGS_HEADER_TABLE_SIZE:
                self.header_table_size(value)
            # the others are advisory
        self._settings_seen = True
        self._write(frame(SETTINGS, ACK, 0))
        if self._blocked:
            self._pump()

    def _after_input(self) -> None:
        """Window updates owed after a read: batched, so many small frames cost one update."""
        acks = self._acks
        if acks:
            out = []
            for stream in acks:
                if not stream.closed and not stream.remote_closed and stream.unacked:
                    out.append(frame(WINDOW_UPDATE, 0, stream.id, _U32.pack(stream.unacked)))
                    stream.recv_window += stream.unacked
                    stream.unacked = 0
            acks.clear()
            if out:
                self._write(b"".join(out))
        if self.conn_unacked >= CONN_WINDOW // 2:
            self.release_connection_window()

    def release_connection_window(self) -> None:
        """Give the peer back the connection window it used (held while too much is buffered)."""
        n = self.conn_unacked
        if n and not self.closed and self.buffered_in < self.max_buffered_in:
            self.conn_unacked = 0
            self.recv_window += n
            self._write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(n)))

    # -- application interface -------------------------------------------------------------------

    def new_stream(self, sid: int) -> H2Stream:
        return H2Stream(sid, self.peer_window)

    def parse_headers(self, headers: list):
        """What `on_headers` gets for a header list ((name, value) byte pairs); kept with the
        decoded block, so a repeated block is parsed once."""
        return headers

    def on_headers(self, stream: H2Stream, headers, size: int, end_stream: bool) -> None:
        """A new stream's request headers (as `parse_headers` made them) and their decoded size."""

    def on_data(self, stream: H2Stream, data: bytes, end_stream: bool) -> None:
        """DATA of an open stream (empty with end_stream for a bare END_STREAM or trailers)."""

    def on_reset(self, stream: H2Stream, code: int) -> None:
        """The stream is gone: reset by the peer, by a stream error, or with the connection."""

    def on_closed(self) -> None:
        """The connection is closed."""

    # -- frames out ------------------------------------------------------------------------------

    def _write(self, data) -> None:
        if self.closed:
            return  # after our last frames: nothing more goes out
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        self._out = []
        transport = self.transport
        if transport is None:
            return
        if len(out) == 1:
            transport.write(out[0])
        else:
            transport.writelines(out)

    def render(self, block) -> bytes:
        """A header block's bytes at the moment it is written.  Subclasses that keep HPACK
        state for their answers turn their markers into blocks here: blocks reach the peer in
        the order they are rendered, so the peer's dynamic table follows ours."""
        return block

    def header_table_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE (the dynamic table our blocks may use)."""

    def _headers_frames(self, sid: int, block, end_stream: bool) -> bytes:
        block = self.render(block)
        limit = self.peer_max_frame
        flags = END_STREAM if end_stream else 0
        if len(block) <= limit:
            return frame(HEADERS, flags | END_HEADERS, sid, block)
        parts = [frame(HEADERS, flags, sid, block[:limit])]
        for off in range(limit, len(block), limit):
            last = off + limit >= len(block)
            parts.append(frame(CONTINUATION, END_HEADERS if last else 0, sid, block[off : off + limit]))
        return b"".join(parts)

    def send_headers(self, stream: H2Stream, block) -> None:
        if stream.closed:
            return
        stream.headers_sent = True
        self._write(self._headers_frames(stream.id, block, False))

    def send_response(self, stream: H2Stream, head, body: bytes, trailers, prefix: bytes = b"") -> None:
        """Headers, one DATA payload (`prefix` + `body`) and trailers: one write when the windows
        allow, else the DATA and trailers wait for window."""
        if stream.closed:
            return
        n = len(prefix) + len(body)
        limit = self.peer_max_frame
        head = self.render(head)
        if n <= stream.send_window and n <= self.send_window and n <= limit and not stream.outq and len(head) <= limit:
            trailers = self.render(trailers)
            if len(trailers) <= limit:
                stream.send_window -= n
                self.send_window -= n
                sid = stream.id.to_bytes(4, "big")
                hs = len(head)
                ts = len(trailers)
                self._write(
                    b"".join(
                        (
                            hs.to_bytes(3, "big"), _HEADERS_END_HEADERS, sid, head,
                            n.to_bytes(3, "big"), _DATA_NO_FLAGS, sid, prefix, body,
                            ts.to_bytes(3, "big"), _HEADERS_END_STREAM, sid, trailers,
                        )
                    )
                )  # fmt: skip
                stream.headers_sent = True
                self._end_stream(stream)
                return
        self.send_headers(stream, head)
        self.send_data(stream, prefix + body if prefix else body)
        self.send_trailers(stream, trailers)

    def send_data(self, stream: H2Stream, data) -> None:
        """Queue DATA (no END_STREAM: trailers end our streams); sent as the windows allow."""
        if stream.closed or not len(data):
            return
        if stream.outq is None:
            stream.outq = deque()
        stream.outq.append(memoryview(data))
        stream.out_bytes += len(data)
        self.held_out += len(data)
        self._blocked[stream.id] = stream
        self._pump()

    def send_trailers(self, stream: H2Stream, block) -> None:
        """End the stream with trailers (or a trailers-only response, if no headers went out)."""
        if stream.closed:
            return
        if stream.outq:
            stream.trailers = block
            return
        stream.headers_sent = True
        self._write(self._headers_frames(stream.id, block, True))
        self._end_stream(stream)

    def _pump(self) -> None:
        """Send queued DATA as far as the windows allow, streams in turn."""
        blocked = self._blocked
        limit = self.peer_max_frame
        out = []
        for sid in list(blocked):
            if self.send_window <= 0:
                break
            stream = blocked[sid]
            q = stream.outq
            while q and stream.send_window > 0 and self.send_window > 0:
                chunk = q[0]
                take = min(len(chunk), stream.send_window, self.send_window, limit)
                out.append(frame_head(DATA, 0, sid, take))
                if take == len(chunk):
                    out.append(chunk)
                    q.popleft()
                else:
                    out.append(chunk[:take])
                    q[0] = chunk[take:]
                stream.send_window -= take
                self.send_window -= take
                stream.out_bytes -= take
                self.held_out -= take
            if not q:
                del blocked[sid]
                if stream.trailers is not None:
                    trailers, stream.trailers = stream.trailers, None
                    out.append(self._headers_frames(sid, trailers, True))
                    self._end_stream(stream)
        if out and not self.closed:
            self._out.extend(out)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self._flush)

    def _remember_unfinished(self, sid: int) -> None:
        """A stream we ended before the peer did: what it still sends on it is ignored."""
        unfinished = self._unfinished
        unfinished[sid] = None
        if len(unfinished) > 1024:
            del unfinished[next(iter(unfinished))]

    def _end_stream(self, stream: H2Stream) -> None:
        """We sent END_STREAM: the stream is done on our side."""
        if not stream.remote_closed:
            self._remember_unfinished(stream.id)
        stream.closed = True
        self.streams.pop(stream.id, None)
        self._blocked.pop(stream.id, None)
        if self.draining or self.goaway_sent:
            self._close_if_done(answered=True)

    def _drop(self, stream: H2Stream) -> None:
        if not stream.remote_closed:
            self._remember_unfinished(stream.id)
        stream.closed = True
        self._blocked.pop(stream.id, None)
        if stream.out_bytes:
            self.held_out -= stream.out_bytes
            stream.out_bytes = 0
        stream.outq = None
        self._acks.discard(stream)
        if self.draining or self.goaway_sent:
            self._close_if_done(answered=True)

    def stream_error(self, stream: H2Stream, code: int) -> None:
        """RST_STREAM: the stream ends, the connection goes on."""
        if stream.closed:
            return
        self._write(frame(RST_STREAM, 0, stream.id, _U32.pack(code)))
        self.streams.pop(stream.id, None)
        self._drop(stream)
        self.on_reset(stream, code)

    def connection_error(self, code: int, message: str) -> None:
        """GOAWAY with `code` and close."""
        if self.closed:
            return
        if code != NO_ERROR:
            log.info("HTTP/2 connection error %d: %s", code, message)
        self._write(frame(GOAWAY, 0, 0, _GOAWAY.pack(self.last_sid, code) + message.encode("utf-8", "replace")[:256]))
        self._close()

    def shutdown(self) -> None:
        """Graceful: GOAWAY naming the last stream we take; the open ones finish, then close."""
        if self.closed or self.goaway_sent:
            return
        self.goaway_sent = True
        self._write(frame(GOAWAY, 0, 0, _GOAWAY.pack(self.last_sid, NO_ERROR)))
        self._close_if_done()

    def _close_if_done(self, answered: bool = False) -> None:
        """Close once no stream is open.  `answered`: a stream was just answered after our
        GOAWAY; the peer gets FINAL_GRACE_S to read it and close first."""
        if self.streams or self.closed:
            return
        if answered and self.goaway_sent and not self.draining:
            if self._final_timer is None:
                self._flush()
                self._final_timer = self.loop.call_later(FINAL_GRACE_S, self._close)
            return
        self._close()

    def _close(self) -> None:
        """Write what is pending, then close without losing it: half-close first and read (and
        drop) whatever the peer still sends until it closes, for at most LINGER_S.  Closing a
        socket with unread input would reset it, and a reset can discard our last frames
        before the peer reads them."""
        self._flush()
        self.closed = True
        transport = self.transport
        if transport is None:
            return
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:
                transport.close()
                return
            self.loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _indexed_only(block: bytes) -> bool:
    """Whether a header block holds only indexed fields (RFC 7541 6.1), which never change the
    dynamic table."""
    i = 0
    n = len(block)
    while i < n:
        c = block[i]
        if c < 0x80:
            return False
        i += 1
        if c == 0xFF:  # index of 127 or more: continuation bytes follow
            while i < n and block[i] & 0x80:
                i += 1
            i += 1
    return True
