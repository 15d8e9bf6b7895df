"""The gRPC response encoding both transports share (`grpc_service.Wire`): written by hand, it must
give the bytes protobuf gives."""

from __future__ import annotations

import numpy as np

from parity._proto.inference import grpc_service_pb2 as pb
from parity.serving.transport.grpc_service import Wire, stream_error, stream_ok
from parity.types import Tensor


def test_response_encoding_matches_protobuf():
    """The transport writes ModelInferResponse bytes by hand; they must parse as protobuf builds them."""
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
    wire = Wire()
    for model, version, rid, outputs in cases:
        expected = pb.ModelInferResponse(model_name=model, model_version=version, id=rid)
        for t in outputs:
            expected.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.data.shape))
            if t.datatype == "BYTES":
                expected.raw_output_contents.append(b"".join(len(v).to_bytes(4, "little") + v for v in t.data.ravel()))
            else:
                expected.raw_output_contents.append(t.data.astype(t.data.dtype.newbyteorder("<")).tobytes())
        got = wire.encode(model, version, rid, {t.name: t.data for t in outputs}, {t.name: t.datatype for t in outputs})
        assert pb.ModelInferResponse.FromString(got) == expected
        assert got == expected.SerializeToString()
        assert pb.ModelStreamInferResponse.FromString(stream_ok(got)).infer_response == expected
    err = pb.ModelStreamInferResponse.FromString(stream_error("bad " * 100, "m", "7"))
    assert err.error_message == "bad " * 100 and err.infer_response.model_name == "m" and err.infer_response.id == "7"
