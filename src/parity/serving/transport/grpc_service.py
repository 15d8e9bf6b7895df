"""What both gRPC transports share: `inference.GRPCInferenceService` decoded into `parity.types`
objects and encoded back, independent of how HTTP/2 is spoken.

- `decode_infer_request`: ModelInferRequest -> InferRequest; raw tensor contents become numpy arrays
  over the received bytes (no copy), with `datatypes.decode_raw` for BYTES and for the errors;
- `Wire`: responses written as protobuf wire bytes directly: the per-model prefix and the
  per-output tensor headers are encoded once and cached, numeric outputs are joined into the
  message without an intermediate copy;
- `GrpcService`: every method other than the two inference ones, as `handler(request, token)`
  returning a message (or its serialized bytes) and raising `ParityError`s; with
  `parity.v1.FeatureService/GetOnlineFeatures` (online feature retrieval) and `Push` (fresh
  rows for a feature view, `parity.features.push`), served next to it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, Callable

import numpy as np
from google.protobuf import json_format

from parity._proto.inference import grpc_service_pb2 as pb
from parity._proto.inference import model_config_pb2 as mc
from parity._proto.parity.v1 import features_pb2 as fpb
from parity.errors import InvalidInput, NotFound, Unimplemented
from parity.serving import clock
from parity.serving.core import InferenceCore
from parity.serving.datatypes import DTYPES, WIRE_DTYPES, decode_raw, element_count, encode_bytes
from parity.types import InferRequest, RequestedOutput, Tensor

log = logging.getLogger("parity.grpc")

SERVICE = "inference.GRPCInferenceService"
FEATURE_SERVICE = "parity.v1.FeatureService"
MONITORING_SERVICE = "parity.v1.MonitoringService"

_LITTLE = sys.byteorder == "little"
# grpcio cancels a call whose deadline passed; a cancellation this close to the request's deadline
# is counted as a timeout, not as a client cancel (uvloop's clock ticks in milliseconds).
_CLOCK_SLACK_S = 0.005

# Typed `contents` fields by datatype: (field name, dtype the field holds).  FP16 and BF16 have no
# typed field in the protocol: they travel as raw contents only.
_CONTENTS: dict[str, tuple[str, np.dtype | None]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", None),
}


# Raw contents of these datatypes are decoded inline (little-endian numpy dtypes).
_NUMERIC: dict[str, np.dtype] = {k: v for k, v in WIRE_DTYPES.items() if k != "BYTES"}


# -- protobuf wire encoding of responses -------------------------------------------------------------

_SMALL_VARINTS = [bytes([i]) for i in range(128)]


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    if n < 128:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, value: bytes) -> bytes:
    return tag + _varint(len(value)) + value


# Field tags (field number << 3 | wire type 2) of the messages we write by hand.
_T1, _T2, _T3, _T5, _T6 = b"\x0a", b"\x12", b"\x1a", b"\x2a", b"\x32"
# ModelInferResponse: 1 model_name, 2 model_version, 3 id, 5 outputs, 6 raw_output_contents
# InferOutputTensor: 1 name, 2 datatype, 3 shape (packed int64)
# ModelStreamInferResponse: 1 error_message, 2 infer_response


class Wire:
    """Caches of encoded message pieces; keys are plain strings, so nothing keeps a model alive."""

    def __init__(self) -> None:
        self.prefixes: dict[tuple[str, str], bytes] = {}
        self.headers: dict[tuple[str, str], bytes] = {}
        self.tensors: dict[tuple, bytes] = {}  # (name, datatype, shape) -> encoded output tensor

    def prefix(self, model: str, version: str) -> bytes:
        key = (model, version)
        p = self.prefixes.get(key)
        if p is None:
            p = self.prefixes[key] = _field(_T1, model.encode()) + _field(_T2, version.encode())
        return p

    def header(self, name: str, datatype: str) -> bytes:
        key = (name, datatype)
        h = self.headers.get(key)
        if h is None:
            h = self.headers[key] = _field(_T1, name.encode()) + _field(_T2, datatype.encode())
        return h

    def encode(self, model: str, version: str, req_id: str, arrays: dict, types: dict) -> bytes:
        """A serialized ModelInferResponse with raw_output_contents (what tritonclient reads),
        from {output name: array} and {output name: datatype}."""
        parts: list = [self.prefix(model, version)]
        if req_id:
            parts.append(_field(_T3, req_id.encode()))
        raws: list = []
        tensors = self.tensors
        for name, arr in arrays.items():
            datatype = types[name]
            shape = arr.shape
            key = (name, datatype, shape)
            tensor = tensors.get(key)  # the output's encoded InferOutputTensor, with its field tag
            if tensor is None:
                if shape:
                    dims = b"".join([_varint(d) for d in shape])
                    sub = self.header(name, datatype) + _T3 + _varint(len(dims)) + dims
                else:  # a scalar: no shape field, as protobuf writes it
                    sub = self.header(name, datatype)
                tensor = _T5 + _varint(len(sub)) + sub
                if len(tensors) >= 4096:
                    tensors.clear()
                tensors[key] = tensor
            parts.append(tensor)
            if datatype == "BYTES":
                data = encode_bytes(arr)
                n = len(data)
            else:
                if _LITTLE and arr.flags.c_contiguous and arr.dtype.byteorder != ">":
                    data = arr  # joined through the buffer protocol: no intermediate copy
                else:
                    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
                n = arr.nbytes
            raws.append(_T6)
            raws.append(_varint(n))
            raws.append(data)
        parts += raws
        return b"".join(parts)


def stream_ok(inner: bytes) -> bytes:
    """ModelStreamInferResponse{infer_response: inner}."""
    return _T2 + _varint(len(inner)) + inner


def stream_error(message: str, model: str, req_id: str) -> bytes:
    """ModelStreamInferResponse{error_message, infer_response{model_name, id}}: the id lets a
    client match the error to its request."""
    inner = b""
    if model:
        inner += _field(_T1, model.encode())
    if req_id:
        inner += _field(_T3, req_id.encode())
    out = _field(_T1, message.encode())
    if inner:
        out += _field(_T2, inner)
    return out


# -- request decoding ----------------------------------------------------------------------------------


def _param_value(p: pb.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _params(m) -> dict:
    out = {}
    for k in m:  # keys and indexing: cheaper than the map's items view
        v = m[k]
        which = v.WhichOneof("parameter_choice")
        out[k] = None if which is None else getattr(v, which)
    return out


def _typed_contents(name: str, datatype: str, shape: tuple[int, ...], inp) -> np.ndarray:
    """An input given in the typed `contents` fields."""
    spec = _CONTENTS.get(datatype)
    if spec is None:
        if datatype in DTYPES:
            raise InvalidInput(f"input '{name}': {datatype} data has no typed contents field; send it in raw_input_contents")
        raise InvalidInput(f"input '{name}': unknown datatype '{datatype}'; use one of {sorted(DTYPES)}")
    field, wide = spec
    values = getattr(inp.contents, field)
    count = element_count(shape)
    if len(values) != count:
        if not inp.HasField("contents") and count:
            raise InvalidInput(f"input '{name}' has no data: send it in raw_input_contents (or in contents.{field})")
        raise InvalidInput(
            f"input '{name}': contents.{field} has {len(values)} elements but shape {list(shape)} needs {count}"
        )
    if wide is None:  # BYTES
        out = np.empty(count, dtype=object)
        if count:
            out[:] = list(values)
        return out.reshape(shape)
    arr = np.array(values, dtype=wide)
    target = DTYPES[datatype]
    if target != wide:
        narrow = arr.astype(target)
        if not np.array_equal(narrow, arr):
            raise InvalidInput(f"input '{name}': a value in contents.{field} does not fit {datatype}")
        arr = narrow
    return arr.reshape(shape)


_MAX_DIMS = 32  # numpy's limit on array dimensions


def _bad_shape(name: str, shape: tuple[int, ...]) -> InvalidInput:
    if len(shape) > _MAX_DIMS:
        return InvalidInput(f"input '{name}': shape has {len(shape)} dimensions; at most {_MAX_DIMS} are supported")
    return InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")


def decode_infer_request(msg: pb.ModelInferRequest) -> InferRequest:
    """ModelInferRequest -> InferRequest (tensors checked for self-consistency only)."""
    raw = msg.raw_input_contents
    inputs_pb = msg.inputs
    n_raw = len(raw)
    tensors: list[Tensor] = []
    if n_raw:
        if n_raw != len(inputs_pb):
            raise InvalidInput(
                f"the request has {len(inputs_pb)} input(s) but {n_raw} raw_input_contents; "
                "send one raw content per input, in the order of the inputs"
            )
        for i, inp in enumerate(inputs_pb):
            name = inp.name
            datatype = inp.datatype
            shape = tuple(inp.shape[:])  # [:] first: a list converts faster than the repeated field
            if shape and (min(shape) < 0 or len(shape) > _MAX_DIMS):
                raise _bad_shape(name, shape)
            if inp.HasField("contents"):
                raise InvalidInput(f"input '{name}': give its data either in contents or in raw_input_contents, not both")
            content = raw[i]
            dtype = _NUMERIC.get(datatype)
            if dtype is not None:  # the common case, inline; decode_raw words the errors
                size = dtype.itemsize
                for d in shape:
                    size *= d
                if size == len(content):
                    data = np.ndarray(shape, dtype, content)  # a read-only view of the message's bytes
                else:
                    data = decode_raw(name, datatype, shape, content)
            else:
                data = decode_raw(name, datatype, shape, content)
            tensors.append(Tensor(name, datatype, shape, data, _params(inp.parameters) if inp.parameters else {}))
    else:
        for inp in inputs_pb:
            name = inp.name
            datatype = inp.datatype
            shape = tuple(inp.shape[:])
            if shape and (min(shape) < 0 or len(shape) > _MAX_DIMS):
                raise _bad_shape(name, shape)
            data = _typed_contents(name, datatype, shape, inp)
            tensors.append(Tensor(name, datatype, shape, data, _params(inp.parameters) if inp.parameters else {}))
    outputs = None
    if msg.outputs:
        outputs = [RequestedOutput(o.name, _params(o.parameters) if o.parameters else {}) for o in msg.outputs]
    req = InferRequest(msg.model_name, msg.model_version, msg.id, tensors, outputs, {}, None)
    if msg.parameters:
        params = req.parameters = _params(msg.parameters)
        timeout = params.get("timeout")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
                raise InvalidInput(f"parameter 'timeout' must be a non-negative number of microseconds, got {timeout!r}")
            if timeout > 0:  # 0: no timeout, as in Triton
                req.deadline = clock.now() + timeout * 1e-6
    return req


# -- the service's other methods ---------------------------------------------------------------------


class GrpcService:
    """The non-inference methods.  Each takes the decoded request and the caller's bearer token
    (or None) and returns a response message or its serialized bytes."""

    def __init__(self, core: InferenceCore):
        self.core = core
        # (model, version number) -> (version fingerprint, serialized ModelConfigResponse)
        self._config_cache: dict[tuple[str, int], tuple[tuple, bytes]] = {}

    def methods(self) -> dict[str, tuple[type, Callable]]:
        """Method name -> (request message class, handler)."""
        return {
            "ServerLive": (pb.ServerLiveRequest, self.server_live),
            "ServerReady": (pb.ServerReadyRequest, self.server_ready),
            "ModelReady": (pb.ModelReadyRequest, self.model_ready),
            "ServerMetadata": (pb.ServerMetadataRequest, self.server_metadata),
            "ModelMetadata": (pb.ModelMetadataRequest, self.model_metadata),
            "ModelConfig": (pb.ModelConfigRequest, self.model_config),
            "ModelStatistics": (pb.ModelStatisticsRequest, self.model_statistics),
            "RepositoryIndex": (pb.RepositoryIndexRequest, self.repository_index),
            "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, self.repository_model_load),
            "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, self.repository_model_unload),
        }

    def feature_methods(self) -> dict[str, tuple[type, Callable]]:
        """The methods of `FEATURE_SERVICE`: method name -> (request message class, handler)."""
        return {
            "GetOnlineFeatures": (fpb.GetOnlineFeaturesRequest, self.get_online_features),
            "Push": (fpb.PushRequest, self.push),
        }

    def monitoring_methods(self) -> dict[str, tuple[type, Callable]]:
        """The methods of `MONITORING_SERVICE`."""
        from parity._proto.parity.v1 import monitoring_pb2 as mpb

        async def feedback(request, token=None):
            result = await self.core.feedback(request.id, list(request.labels), list(request.rows) or None)
            status = result["status"]
            if status == "unknown":
                raise NotFound(f"no served request with id {request.id!r} in the prediction log")
            if status == "expired":
                raise NotFound(f"the request {request.id!r} left the prediction log (older than its TTL or capacity)")
            if status == "invalid":
                raise InvalidInput(result.get("message", "invalid feedback"))
            return mpb.FeedbackResponse(status=status, model=result.get("model", ""), version=str(result.get("version", "")), joined=result["rows"])

        return {"Feedback": (mpb.FeedbackRequest, feedback)}

    def paths(self) -> dict[str, tuple[type, Callable]]:
        """Every method here by its full path ("/service/method") -> (request class, handler)."""
        out = {f"/{SERVICE}/{name}": entry for name, entry in self.methods().items()}
        out.update({f"/{FEATURE_SERVICE}/{name}": entry for name, entry in self.feature_methods().items()})
        out.update({f"/{MONITORING_SERVICE}/{name}": entry for name, entry in self.monitoring_methods().items()})
        return out

    # -- server and model information ----------------------------------------------------------------

    async def server_live(self, request, token=None):
        return pb.ServerLiveResponse(live=self.core.live)

    async def server_ready(self, request, token=None):
        return pb.ServerReadyResponse(ready=self.core.ready)

    async def model_ready(self, request, token=None):
        return pb.ModelReadyResponse(ready=self.core.model_ready(request.name, request.version))

    async def server_metadata(self, request, token=None):
        md = self.core.server_metadata()
        return pb.ServerMetadataResponse(name=md["name"], version=md["version"], extensions=md["extensions"])

    async def model_metadata(self, request, token=None):
        md = self.core.model_metadata(request.name, request.version)
        TM = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=md["name"],
            versions=md["versions"],
            platform=md["platform"],
            inputs=[TM(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in md["inputs"]],
            outputs=[TM(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in md["outputs"]],
        )

    async def model_config(self, request, token=None) -> bytes:
        version = self.core.version(request.name, request.version)
        key = (version.model, version.number)
        cached = self._config_cache.get(key)
        if cached is not None and cached[0] == version.fingerprint:
            return cached[1]
        data = self.core.model_config(request.name, request.version)
        config = json_format.ParseDict(data, mc.ModelConfig())
        body = pb.ModelConfigResponse(config=config).SerializeToString()
        self._config_cache[key] = (version.fingerprint, body)
        return body

    async def model_statistics(self, request, token=None):
        stats = self.core.model_statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[_model_stats(s) for s in stats])

    async def repository_index(self, request, token=None):
        Index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                Index(name=m["name"], version=m.get("version", ""), state=m.get("state", ""), reason=m.get("reason", ""))
                for m in self.core.repository_index(request.ready)
            ]
        )

    # -- administration ----------------------------------------------------------------------------------

    async def repository_model_load(self, request, token=None):
        self.core.authorize_admin(token)  # refuse before looking at anything else
        if request.parameters:
            raise Unimplemented(
                f"repository load parameters {sorted(request.parameters)} are not supported; "
                "put the model's config.yaml and files in the repository and load it by name"
            )
        await self.core.load_model(request.model_name, token)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request, token=None):
        await self.core.unload_model(request.model_name, token)
        return pb.RepositoryModelUnloadResponse()

    # -- features ------------------------------------------------------------------------------------

    async def get_online_features(self, request: fpb.GetOnlineFeaturesRequest, token=None) -> fpb.GetOnlineFeaturesResponse:
        """The twin of POST /v1/features/online: the store is read off the event loop."""
        features = self.core.features
        if features is None:
            raise NotFound("this server has no feature repository; start it with --feature-repository FILE")
        wanted = _wanted_features(request, features.repo.services)
        entities = {key: _column(f"entity key {key!r}", v, _ENTITY_KINDS) for key, v in request.entities.items()}
        if not entities:
            raise InvalidInput("'entities' must map each join key to its values (one per entity row)")
        values = {name: _column(f"request value {name!r}", v, _REQUEST_KINDS) for name, v in request.request_values.items()}
        def read_and_build() -> fpb.GetOnlineFeaturesResponse:
            # off the event loop: the read and the building of the answer (both grow with the rows)
            got = features.get_online_features(wanted, entities, values or None)
            return fpb.GetOnlineFeaturesResponse(features=[_feature_vector(got, name) for name in got.names])

        return await asyncio.to_thread(read_and_build)

    async def push(self, request: fpb.PushRequest, token=None) -> fpb.PushResponse:
        """The twin of POST /v1/features/push (admin token, as repository load): the rows are
        transformed, logged offline and written online off the event loop."""
        from parity.features.push import authorize_push, check_push_request, push

        features = self.core.features
        if features is None:
            raise NotFound("this server has no feature repository; start it with --feature-repository FILE")
        authorize_push(self.core, token)
        rows = {name: _push_column(request.view, name, col) for name, col in request.columns.items()}
        check_push_request(request.view, rows)
        done = await asyncio.to_thread(push, features.repo, features.store, request.view, rows)
        return fpb.PushResponse(
            view=done.view, rows=done.rows, entities=done.entities, log_file=done.file.name if done.file is not None else ""
        )


def _push_column(view: str, name: str, msg: fpb.PushColumn) -> list:
    """A PushColumn -> a list of values (None under a null); timestamp_micros -> datetime64[us]."""
    which = msg.WhichOneof("values")
    if which is None:
        raise InvalidInput(f"push to feature view {view!r}: column {name!r} has no values: set one of int64_values, "
                           "double_values, string_values, bool_values or timestamp_micros")  # fmt: skip
    values = list(getattr(msg, which).values)
    if which == "timestamp_micros":
        values = [np.datetime64(v, "us") for v in values]
    nulls = msg.nulls
    if nulls:
        if len(nulls) != len(values):
            raise InvalidInput(f"push to feature view {view!r}: column {name!r} has {len(values)} values but {len(nulls)} nulls")
        values = [None if n else v for v, n in zip(values, nulls)]
    return values


def _wanted_features(request: fpb.GetOnlineFeaturesRequest, services) -> str | list[str]:
    which = request.WhichOneof("features")
    if which == "feature_service":
        name = request.feature_service
        if name not in services:
            raise InvalidInput(f"unknown feature service {name!r}; the repository has {sorted(services)}")
        return name
    if which == "feature_list" and request.feature_list.features:
        return list(request.feature_list.features)
    raise InvalidInput("set 'feature_service' to a feature service name or 'feature_list' to 'view:feature' references")


_ENTITY_KINDS = ("int64_values", "string_values")
_REQUEST_KINDS = ("int64_values", "double_values", "string_values", "bool_values")
# numpy dtypes of the typed lists (strings stay Python lists)
_LIST_DTYPES = {"int64_values": np.int64, "double_values": np.float64, "bool_values": np.bool_}


def _column(what: str, msg, kinds: tuple[str, ...]):
    """An EntityValues / RequestValues message -> a numpy column (or a list of strings)."""
    which = msg.WhichOneof("values")
    if which is None:
        raise InvalidInput(f"{what} has no values: set one of {', '.join(kinds)}")
    values = getattr(msg, which).values
    if which == "string_values":
        return list(values)
    return np.array(values, dtype=_LIST_DTYPES[which])


# FeatureVector's typed lists by numpy dtype kind and size: (oneof field, list class, placeholder)
_VECTOR_FIELDS = {
    np.dtype(np.bool_): ("bool_values", fpb.BoolList, False),
    np.dtype(np.int32): ("int32_values", fpb.Int32List, 0),
    np.dtype(np.int64): ("int64_values", fpb.Int64List, 0),
    np.dtype(np.float32): ("float_values", fpb.FloatList, 0.0),
    np.dtype(np.float64): ("double_values", fpb.DoubleList, 0.0),
}


def _feature_vector(got, name: str) -> fpb.FeatureVector:
    values = got.values[name]
    nulls = np.asarray(got.nulls[name], dtype=bool)
    spec = _VECTOR_FIELDS.get(values.dtype)
    if spec is None:  # strings (object columns)
        strings = ["" if n else (v.decode() if isinstance(v, bytes) else str(v)) for v, n in zip(values, nulls)]
        column = fpb.StringList(values=strings)
        field = "string_values"
    else:
        field, cls, placeholder = spec
        column = cls(values=(np.where(nulls, placeholder, values) if nulls.any() else values).tolist())
    return fpb.FeatureVector(
        name=name,
        nulls=nulls.tolist(),
        statuses=got.status[name].tolist(),
        ages_ns=got.age_ns[name].tolist(),
        **{field: column},
    )


def _duration(d: dict | None) -> pb.StatisticDuration:
    if not d:
        return pb.StatisticDuration()
    return pb.StatisticDuration(count=d.get("count", 0), ns=d.get("ns", 0))


_INFER_STATS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


def _model_stats(s: dict) -> pb.ModelStatistics:
    """One ModelStatistics message from the core's dict (Triton's JSON field names)."""
    inf = s.get("inference_stats") or {}
    return pb.ModelStatistics(
        name=s["name"],
        version=s.get("version", ""),
        last_inference=s.get("last_inference", 0),
        inference_count=s.get("inference_count", 0),
        execution_count=s.get("execution_count", 0),
        inference_stats=pb.InferStatistics(**{k: _duration(inf.get(k)) for k in _INFER_STATS}),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=b["batch_size"],
                compute_input=_duration(b.get("compute_input")),
                compute_infer=_duration(b.get("compute_infer")),
                compute_output=_duration(b.get("compute_output")),
            )
            for b in s.get("batch_stats", ())
        ],
    )


__all__ = ["FEATURE_SERVICE", "GrpcService", "SERVICE", "Wire", "decode_infer_request", "stream_error", "stream_ok"]
