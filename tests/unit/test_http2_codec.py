"""The fast gRPC transport's hand-built pieces, checked against the hpack package and the gRPC
spec: constant header blocks, integer encoding, grpc-message percent-encoding, grpc-timeout."""

from __future__ import annotations

import hpack
import pytest

from parity.errors import GrpcCode
from parity.serving.transport import http2
from parity.serving.transport.grpc_fast import RESPONSE_HEAD, TRAILERS_OK, parse_timeout, percent_encode, status_block


def decode(block: bytes) -> list[tuple[str, str]]:
    dec = hpack.Decoder()
    dec.max_header_list_size = 1 << 20
    return [(k, v) for k, v in dec.decode(block)]


def test_constant_blocks_decode_as_intended_and_leave_the_table_alone():
    dec = hpack.Decoder()
    assert dec.decode(RESPONSE_HEAD) == [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-accept-encoding", "identity,deflate,gzip"),
    ]
    assert dec.decode(TRAILERS_OK) == [("grpc-status", "0")]
    # literals without indexing: nothing was added to the decoder's dynamic table
    assert len(dec.header_table.dynamic_entries) == 0


@pytest.mark.parametrize("value", [0, 1, 14, 15, 16, 126, 127, 128, 300, 16383, 16384, 2**21, 2**31 - 1])
@pytest.mark.parametrize("prefix", [4, 5, 6, 7])
def test_hpack_integers_match_the_reference_encoder(value, prefix):
    from hpack.hpack import encode_integer

    assert http2.hpack_int(value, prefix) == bytes(encode_integer(value, prefix))


@pytest.mark.parametrize("n", [0, 1, 126, 127, 128, 1000, 70000])
def test_long_literals_round_trip(n):
    value = b"v" * n
    assert decode(http2.literal(b"x-long", value)) == [("x-long", "v" * n)]


def test_status_fields():
    assert decode(http2.status_field(200)) == [(":status", "200")]
    assert decode(http2.status_field(415)) == [(":status", "415")]


def test_error_statuses_and_trailers_only():
    only = decode(status_block(GrpcCode.NOT_FOUND, "no model 'x'", trailers_only=True))
    assert only == [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "5"), ("grpc-message", "no model 'x'")]
    trailers = decode(status_block(GrpcCode.INTERNAL, "", trailers_only=False))
    assert trailers == [("grpc-status", "13")]


def test_grpc_message_is_percent_encoded_as_the_spec_says():
    assert percent_encode("plain text, with (punctuation)!") == b"plain text, with (punctuation)!"
    assert percent_encode("100% sure") == b"100%25 sure"
    assert percent_encode("naïve\nline") == b"na%C3%AFve%0Aline"
    # tritonclient / grpcio decode it back to the original
    from urllib.parse import unquote

    assert unquote(percent_encode("ünïcode % \t ok").decode()) == "ünïcode % \t ok"


@pytest.mark.parametrize(
    "raw, seconds",
    [(b"1S", 1.0), (b"250m", 0.25), (b"99999999u", 99.999999), (b"2H", 7200.0), (b"3M", 180.0), (b"500n", 5e-7)],
)
def test_grpc_timeout_parses(raw, seconds):
    assert parse_timeout(raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", [b"", b"S", b"1", b"123456789S", b"1s", b"-1S", b"1.5S", b"1 S", b"\xff\xffS"])
def test_malformed_grpc_timeout_is_refused(raw):
    assert parse_timeout(raw) is None


def test_indexed_only_detection():
    enc = hpack.Encoder()
    headers = [(":method", "POST"), (":path", "/inference.GRPCInferenceService/ModelInfer"), ("te", "trailers")]
    first = enc.encode(headers)  # literals that add to the dynamic table
    second = enc.encode(headers)  # the same fields, now all indexed
    assert not http2._indexed_only(first)
    assert http2._indexed_only(second)
    assert http2._indexed_only(b"\xff\x80\x01")  # index 255 spelled with a continuation byte
    assert not http2._indexed_only(b"\x82\x3f\xe1\x1f")  # a dynamic table size update
