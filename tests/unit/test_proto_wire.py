"""Wire compatibility of our inference protos with tritonclient's.

Our generated modules and tritonclient's register the same `inference.*`
symbols in protobuf's default descriptor pool, so they cannot share a process:
tritonclient is only ever imported in a subprocess, and the two sides are
compared through serialized descriptors and message bytes.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, json_format

from parity._proto.inference import grpc_service_pb2 as pb
from parity._proto.inference import model_config_pb2 as mc

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATED = REPO_ROOT / "src" / "parity" / "_proto"

_DUMP_TRITON = """
import base64, json
from tritonclient.grpc import model_config_pb2, service_pb2
print(json.dumps([base64.b64encode(m.DESCRIPTOR.serialized_pb).decode()
                  for m in (model_config_pb2, service_pb2)]))
"""

# Reads {type name: base64 bytes} on stdin; for each, parses the bytes with
# tritonclient's class and answers its JSON form and its re-serialized bytes.
_ROUND_TRIP_TRITON = """
import base64, json, sys
from google.protobuf import json_format
from tritonclient.grpc import service_pb2
out = {}
for name, data in json.load(sys.stdin).items():
    msg = getattr(service_pb2, name).FromString(base64.b64decode(data))
    out[name] = {"json": json_format.MessageToDict(msg),
                 "bytes": base64.b64encode(msg.SerializeToString()).decode()}
print(json.dumps(out))
"""


def _run_python(code: str, stdin: str = "") -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _index(files: list[descriptor_pb2.FileDescriptorProto]):
    """Map full names to message, enum and service descriptor protos."""
    messages, enums, services = {}, {}, {}

    def walk(prefix: str, msg: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{msg.name}"
        messages[name] = msg
        for enum in msg.enum_type:
            enums[f"{name}.{enum.name}"] = enum
        for nested in msg.nested_type:
            walk(name, nested)

    for f in files:
        for msg in f.message_type:
            walk(f.package, msg)
        for enum in f.enum_type:
            enums[f"{f.package}.{enum.name}"] = enum
        for svc in f.service:
            services[f"{f.package}.{svc.name}"] = svc
    return messages, enums, services


def _parse(serialized: bytes) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(serialized)


@pytest.fixture(scope="module")
def ours():
    return _index([_parse(mc.DESCRIPTOR.serialized_pb), _parse(pb.DESCRIPTOR.serialized_pb)])


@pytest.fixture(scope="module")
def triton():
    blobs = json.loads(_run_python(_DUMP_TRITON))
    return _index([_parse(base64.b64decode(b)) for b in blobs])


def _field_signature(msg: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto):
    oneof = msg.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    return (field.name, field.type, field.label, field.type_name, oneof, field.proto3_optional)


def test_every_message_field_matches_triton(ours, triton):
    our_messages, triton_messages = ours[0], triton[0]
    assert len(our_messages) > 40  # sanity: the walk found our messages
    for name, msg in our_messages.items():
        assert name in triton_messages, f"{name} is not a Triton message"
        theirs = triton_messages[name]
        assert msg.options.map_entry == theirs.options.map_entry, name
        their_fields = {f.number: _field_signature(theirs, f) for f in theirs.field}
        for field in msg.field:
            assert field.number in their_fields, f"{name}.{field.name}: Triton has no field {field.number}"
            assert _field_signature(msg, field) == their_fields[field.number], f"{name}.{field.name}"


def test_every_enum_matches_triton(ours, triton):
    our_enums, triton_enums = ours[1], triton[1]
    for name, enum in our_enums.items():
        assert name in triton_enums, f"{name} is not a Triton enum"
        theirs = {v.name: v.number for v in triton_enums[name].value}
        for value in enum.value:
            assert theirs.get(value.name) == value.number, f"{name}.{value.name}"


def test_data_type_enum_is_complete(ours, triton):
    def values(index):
        return {v.name: v.number for v in index[1]["inference.DataType"].value}

    assert values(ours) == values(triton)
    assert mc.DataType.Value("TYPE_BF16") == 14


def test_every_rpc_matches_triton(ours, triton):
    name = "inference.GRPCInferenceService"
    theirs = {m.name: m for m in triton[2][name].method}
    ours_methods = ours[2][name].method
    assert {m.name for m in ours_methods} >= {"ModelInfer", "ModelStreamInfer", "ModelConfig", "ModelStatistics"}
    for method in ours_methods:
        assert method.name in theirs, f"Triton has no RPC {method.name}"
        other = theirs[method.name]
        assert (method.input_type, method.output_type) == (other.input_type, other.output_type), method.name
        assert (method.client_streaming, method.server_streaming) == (
            other.client_streaming,
            other.server_streaming,
        ), method.name


def _sample_messages():
    params = {
        "b": pb.InferParameter(bool_param=True),
        "i": pb.InferParameter(int64_param=-7),
        "s": pb.InferParameter(string_param="x"),
        "d": pb.InferParameter(double_param=0.25),
        "u": pb.InferParameter(uint64_param=2**63),
    }
    request = pb.ModelInferRequest(
        model_name="m",
        model_version="3",
        id="req-1",
        parameters=params,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="a", datatype="FP32", shape=[2, 2], parameters={"binary_data_size": params["i"]}
            ),
            pb.ModelInferRequest.InferInputTensor(
                name="t",
                datatype="INT64",
                shape=[-1],
                contents=pb.InferTensorContents(int64_contents=[1, -2], fp32_contents=[0.5], bytes_contents=[b"\0"]),
            ),
        ],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="y", parameters={"classification": params["u"]})],
        raw_input_contents=[bytes(range(16))],
    )
    response = pb.ModelInferResponse(
        model_name="m",
        model_version="3",
        id="req-1",
        parameters={"sequence_end": params["b"]},
        outputs=[pb.ModelInferResponse.InferOutputTensor(name="y", datatype="BYTES", shape=[1], parameters=params)],
        raw_output_contents=[b"\x01\x00\x00\x00z"],
    )
    config = pb.ModelConfigResponse(
        config=mc.ModelConfig(
            name="m",
            backend="python",
            max_batch_size=8,
            version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
            input=[mc.ModelInput(name="a", data_type=mc.TYPE_FP32, dims=[-1, 4], optional=True)],
            output=[mc.ModelOutput(name="y", data_type=mc.TYPE_BF16, dims=[4], label_filename="labels.txt")],
            dynamic_batching=mc.ModelDynamicBatching(
                preferred_batch_size=[4, 8],
                max_queue_delay_microseconds=100,
                default_queue_policy=mc.ModelQueuePolicy(timeout_action=mc.ModelQueuePolicy.DELAY, max_queue_size=64),
                priority_queue_policy={1: mc.ModelQueuePolicy(allow_timeout_override=True)},
            ),
            instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=2, gpus=[0])],
            parameters={"k": mc.ModelParameter(string_value="v")},
            model_warmup=[
                mc.ModelWarmup(
                    name="w", batch_size=1, inputs={"a": mc.ModelWarmup.Input(data_type=mc.TYPE_FP32, random_data=True)}
                )
            ],
            model_transaction_policy=mc.ModelTransactionPolicy(decoupled=True),
        )
    )
    return [request, response, config]


def test_messages_round_trip_through_tritonclient():
    messages = {type(m).__name__: m for m in _sample_messages()}
    payload = {name: base64.b64encode(m.SerializeToString()).decode() for name, m in messages.items()}
    answers = json.loads(_run_python(_ROUND_TRIP_TRITON, json.dumps(payload)))
    for name, msg in messages.items():
        # tritonclient read every field we wrote, with the same values...
        assert answers[name]["json"] == json_format.MessageToDict(msg), name
        # ...and what it writes back parses with our classes to the same message.
        assert type(msg).FromString(base64.b64decode(answers[name]["bytes"])) == msg, name


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generate_reproduces_committed_modules(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "proto" / "generate.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    fresh, committed = _tree(tmp_path), _tree(GENERATED)
    assert sorted(fresh) == sorted(committed)
    for name in fresh:
        assert fresh[name] == committed[name], f"{name} is stale: run python proto/generate.py"


def test_feature_service_proto_is_generated_into_the_private_pool():
    from google.protobuf import descriptor_pool

    from parity._proto import POOL
    from parity._proto.parity.v1 import features_pb2 as fpb

    assert fpb.DESCRIPTOR.package == "parity.v1"
    assert POOL.FindFileByName("parity/v1/features.proto") is fpb.DESCRIPTOR
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindFileByName("parity/v1/features.proto")
    method = fpb.DESCRIPTOR.services_by_name["FeatureService"].methods_by_name["GetOnlineFeatures"]
    assert (method.input_type.full_name, method.output_type.full_name) == (
        "parity.v1.GetOnlineFeaturesRequest",
        "parity.v1.GetOnlineFeaturesResponse",
    )
    assert not method.client_streaming and not method.server_streaming
    # the statuses are the server's own numbers
    from parity.features.online.base import Status

    statuses = fpb.DESCRIPTOR.enum_types_by_name["FeatureStatus"].values
    assert {v.name: v.number for v in statuses} == {s.name: int(s) for s in Status}
