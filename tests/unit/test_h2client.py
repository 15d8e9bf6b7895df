"""The raw HTTP/2 test client (parity.testing.h2client) against a scripted peer on a local socket:
what it writes is what RFC 9113 says, what it reads it reassembles and decodes right."""

from __future__ import annotations

import socket
import struct

import hpack
import pytest

from parity.testing.h2client import (
    PREFACE,
    ConnectionClosed,
    ErrorCode,
    Flag,
    FrameType,
    H2Client,
    ServerViolation,
    Setting,
    encode_frame,
    goaway_payload,
    grpc_message,
    padded,
    parse_grpc_messages,
    priority_payload,
    settings_payload,
    window_update_payload,
)


def test_encode_frame_and_payloads():
    assert encode_frame(FrameType.PING, Flag.ACK, 0, b"12345678") == b"\0\0\x08\x06\x01\0\0\0\0" + b"12345678"
    assert encode_frame(FrameType.DATA, 0, 3, b"ab", length=7)[:3] == b"\0\0\x07"  # a lying length
    assert encode_frame(FrameType.DATA, 0, 1, reserved=True)[5:9] == b"\x80\0\0\x01"
    assert settings_payload({Setting.INITIAL_WINDOW_SIZE: 16}) == b"\0\x04\0\0\0\x10"
    assert settings_payload([(1, 2), (1, 3)]) == b"\0\x01\0\0\0\x02\0\x01\0\0\0\x03"  # repetitions kept
    assert window_update_payload(2**31 - 1) == b"\x7f\xff\xff\xff"
    assert priority_payload(3, 256, exclusive=True) == b"\x80\0\0\x03\xff"
    assert padded(b"xy", 3) == b"\x03xy\0\0\0"
    assert grpc_message(b"abc") == b"\0\0\0\0\x03abc"
    assert parse_grpc_messages(grpc_message(b"a") + grpc_message(b"")) == [b"a", b""]
    with pytest.raises(ValueError):
        parse_grpc_messages(grpc_message(b"abc")[:-1])
    with pytest.raises(ValueError):
        encode_frame(FrameType.DATA, length=1 << 24)


class Peer:
    """A listening socket; `accept()` gives the server side of the client's connection."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = self.listener.getsockname()
        self.conn: socket.socket | None = None

    def accept(self) -> socket.socket:
        if self.conn is not None:
            self.conn.close()
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(5)
        return self.conn

    def read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.conn.recv(n - len(out))
            assert chunk, "the client closed"
            out += chunk
        return out

    def read_frame(self):
        head = self.read(9)
        n = int.from_bytes(head[:3], "big")
        return head[3], head[4], struct.unpack(">I", head[5:9])[0], self.read(n)

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def peer():
    p = Peer()
    yield p
    p.close()


def test_handshake_header_blocks_padding_and_automatic_answers(peer):
    with H2Client(peer.addr, timeout=5) as c:
        s = peer.accept()
        c.send(PREFACE)
        c.send_settings({Setting.ENABLE_PUSH: 0})
        assert peer.read(len(PREFACE)) == PREFACE
        assert peer.read_frame() == (FrameType.SETTINGS, 0, 0, settings_payload({2: 0}))
        enc = hpack.Encoder()
        block = enc.encode([(":status", "200"), ("content-type", "application/grpc"), ("x-long", "v" * 100)])
        trailers = enc.encode([("grpc-status", "0"), (b"grpc-message", b"caf\xe9")])  # a non-UTF-8 octet
        s.sendall(
            encode_frame(
                FrameType.SETTINGS, 0, 0, settings_payload({Setting.INITIAL_WINDOW_SIZE: 100, Setting.MAX_FRAME_SIZE: 20000})
            )
            + encode_frame(FrameType.PING, 0, 0, b"pingpong")
            + encode_frame(FrameType.HEADERS, Flag.PADDED | Flag.PRIORITY, 1, padded(priority_payload(0, 1) + block[:10], 4))
            + encode_frame(FrameType.CONTINUATION, 0, 1, block[10:20])
            + encode_frame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, block[20:])
            + encode_frame(FrameType.DATA, Flag.PADDED, 1, padded(grpc_message(b"hello"), 7))
            + encode_frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.END_STREAM, 1, trailers)
        )
        st = c.wait_stream(1)
        assert c.server_settings == {Setting.INITIAL_WINDOW_SIZE: 100, Setting.MAX_FRAME_SIZE: 20000}
        assert c.max_frame_size == 20000 and c.initial_window == 100
        assert st.status == 200 and st.headers[2] == ("x-long", "v" * 100)
        assert st.grpc_status == 0 and st.grpc_message == "caf\udce9"
        assert st.messages == [b"hello"] and st.ended
        # what it answered by itself: SETTINGS ACK, PING ACK, window for the DATA frame (padding counts)
        assert peer.read_frame() == (FrameType.SETTINGS, Flag.ACK, 0, b"")
        assert peer.read_frame() == (FrameType.PING, Flag.ACK, 0, b"pingpong")
        assert peer.read_frame() == (FrameType.WINDOW_UPDATE, 0, 0, window_update_payload(1 + 10 + 7))


def test_send_headers_splits_blocks_and_send_data_waits_for_window(peer):
    with H2Client(peer.addr, timeout=5) as c:
        s = peer.accept()
        s.sendall(encode_frame(FrameType.SETTINGS, 0, 0, settings_payload({Setting.INITIAL_WINDOW_SIZE: 10})))
        c.read_frame()
        assert peer.read_frame()[:2] == (FrameType.SETTINGS, Flag.ACK)
        hdrs = c.grpc_headers("ModelInfer", metadata=[("x-m", "m" * 50)])
        c.send_headers(1, hdrs, fragment_size=16, pad_length=2)
        frames, block = [], b""
        while not frames or not frames[-1][1] & Flag.END_HEADERS:
            frames.append(peer.read_frame())
        t, flags, sid, payload = frames[0]
        assert sid == 1
        assert t == FrameType.HEADERS and flags & Flag.PADDED and len(payload) == 16 and payload[0] == 2
        block = payload[1:-2] + b"".join(f[3] for f in frames[1:])
        assert all(f[0] == FrameType.CONTINUATION and len(f[3]) <= 16 for f in frames[1:])
        assert hpack.Decoder().decode(block) == hdrs
        # 25 bytes of DATA against a stream window of 10: 10 now, the rest after WINDOW_UPDATEs
        s.sendall(encode_frame(FrameType.WINDOW_UPDATE, 0, 1, window_update_payload(5)))  # before it is needed
        s.sendall(encode_frame(FrameType.WINDOW_UPDATE, 0, 1, window_update_payload(10)))
        c.send_data(1, b"x" * 25, end_stream=True, frame_size=15)
        got = [peer.read_frame() for _ in range(2)]
        assert [len(f[3]) for f in got] == [15, 10] and got[-1][1] == Flag.END_STREAM


def test_goaway_close_and_violations(peer):
    with H2Client(peer.addr, timeout=5) as c:
        s = peer.accept()
        s.sendall(
            encode_frame(FrameType.SETTINGS)
            + encode_frame(FrameType.GOAWAY, 0, 0, goaway_payload(0, ErrorCode.NO_ERROR))
            + encode_frame(FrameType.GOAWAY, 0, 0, goaway_payload(0, ErrorCode.ENHANCE_YOUR_CALM, b"calm"))
        )
        assert c.wait_goaway_or_close(5) == ErrorCode.ENHANCE_YOUR_CALM
        assert c.goaway.debug_data == b"calm" and "ENHANCE_YOUR_CALM" in str(c.goaway)
        s.close()
        with pytest.raises(ConnectionClosed) as e:
            c.read_frame(5)
        assert e.value.error_code == ErrorCode.ENHANCE_YOUR_CALM
    with H2Client(peer.addr, timeout=5) as c:
        s = peer.accept()
        s.sendall(encode_frame(FrameType.PING, 0, 0, b"12345678"))  # not SETTINGS first
        with pytest.raises(ServerViolation):
            c.read_frame(5)
    with H2Client(peer.addr, timeout=5) as c:
        s = peer.accept()
        s.sendall(
            encode_frame(FrameType.SETTINGS)
            + encode_frame(FrameType.HEADERS, 0, 1, b"\x88")
            + encode_frame(FrameType.PING, 0, 0, bytes(8))
        )
        with pytest.raises(ServerViolation):  # a header block interrupted
            c.drain(1)
            c.read_frame(1)
    with H2Client(peer.addr, timeout=5) as c:
        peer.accept()
        with pytest.raises(TimeoutError):
            c.read_frame(0.1)
