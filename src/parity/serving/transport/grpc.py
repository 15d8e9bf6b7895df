"""The gRPC transport: `inference.GRPCInferenceService` (KServe v2 / Triton) on grpcio's asyncio API.

It runs on the server's event loop (uvloop), decodes each message into `parity.types` objects,
calls the shared `InferenceCore` and maps `ParityError`s to gRPC status codes.  The request path
(ModelInfer, ModelStreamInfer) is kept lean:

- requests are parsed by the generated (upb) classes; raw tensor contents become numpy arrays
  over the received bytes (no copy), with `datatypes.decode_raw` for BYTES and for the errors;
- responses are written as protobuf wire bytes directly: the per-model prefix and the per-output
  tensor headers are encoded once and cached, numeric outputs are joined into the message without
  an intermediate copy;
- the core is called through submit / finish / fail, with no extra task per request.

Everything else (metadata, configuration, statistics, repository) goes through the generated
messages; ModelConfig answers are built once per model version and cached.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, Callable

import grpc
import grpc.aio
import numpy as np
from google.protobuf import json_format

from parity._proto.inference import grpc_service_pb2 as pb
from parity._proto.inference import model_config_pb2 as mc
from parity.config import ServerConfig
from parity.errors import (
    DeadlineExceeded,
    GrpcCode,
    InvalidInput,
    ParityError,
    Unimplemented,
    as_parity_error,
)
from parity.serving.core import InferenceCore, bearer
from parity.serving.datatypes import DTYPES, WIRE_DTYPES, decode_raw, element_count, encode_bytes
from parity.types import InferRequest, RequestedOutput, Tensor

log = logging.getLogger("parity.grpc")

SERVICE = "inference.GRPCInferenceService"

# Our status codes -> grpcio's enum (grpc.StatusCode values are (number, name) pairs).
_STATUS: dict[int, grpc.StatusCode] = {sc.value[0]: sc for sc in grpc.StatusCode}
STATUS_CODES: dict[GrpcCode, grpc.StatusCode] = {c: _STATUS[int(c)] for c in GrpcCode}
_INTERNAL = grpc.StatusCode.INTERNAL
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_AbortError = grpc.aio.AbortError
_CancelledError = asyncio.CancelledError
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


class _Wire:
    """Caches of encoded message pieces; keys are plain strings, so nothing keeps a model alive."""

    def __init__(self) -> None:
        self.prefixes: dict[tuple[str, str], bytes] = {}
        self.headers: dict[tuple[str, str], bytes] = {}

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

    def infer_response(self, model: str, version: str, req_id: str, outputs: list[Tensor]) -> bytes:
        """A serialized ModelInferResponse with raw_output_contents (what tritonclient reads)."""
        parts: list = [self.prefix(model, version)]
        if req_id:
            parts.append(_field(_T3, req_id.encode()))
        raws: list = []
        for t in outputs:
            arr = t.data
            shape = arr.shape
            if len(shape) == 1 and shape[0] < 128:
                sub = self.header(t.name, t.datatype) + _T3 + b"\x01" + _SMALL_VARINTS[shape[0]]
            elif shape:
                dims = b"".join([_varint(d) for d in shape])
                sub = self.header(t.name, t.datatype) + _T3 + _varint(len(dims)) + dims
            else:  # a scalar: no shape field, as protobuf writes it
                sub = self.header(t.name, t.datatype)
            parts.append(_T5)
            parts.append(_varint(len(sub)))
            parts.append(sub)
            if t.datatype == "BYTES":
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


def _stream_ok(inner: bytes) -> bytes:
    """ModelStreamInferResponse{infer_response: inner}."""
    return _T2 + _varint(len(inner)) + inner


def _stream_error(message: str, model: str, req_id: str) -> bytes:
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
    return {k: _param_value(v) for k, v in m.items()}


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


def decode_infer_request(msg: pb.ModelInferRequest, loop: asyncio.AbstractEventLoop | None = None) -> InferRequest:
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
                    data = np.frombuffer(content, dtype).reshape(shape)
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
                req.deadline = (loop or asyncio.get_running_loop()).time() + timeout * 1e-6
    return req


# -- the transport -------------------------------------------------------------------------------------


class GrpcTransport:
    name = "grpc"

    def __init__(self, core: InferenceCore, config: ServerConfig):
        self.core = core
        self.config = config
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port = 0
        self._wire = _Wire()
        # (model, version number) -> (version fingerprint, serialized ModelConfigResponse)
        self._config_cache: dict[tuple[str, int], tuple[tuple, bytes]] = {}
        self._streams: set[Callable[[], None]] = set()  # open ModelStreamInfer calls: their stop()

    @property
    def port(self) -> int:
        return self._port

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        uu = grpc.unary_unary_rpc_method_handler

        def msg(behavior, request_cls, response_cls=None):
            # response_cls None: the behavior returns serialized bytes
            return uu(
                behavior,
                request_deserializer=request_cls.FromString,
                response_serializer=None if response_cls is None else response_cls.SerializeToString,
            )

        return {
            "ServerLive": msg(self._guard(self.server_live), pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": msg(self._guard(self.server_ready), pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": msg(self._guard(self.model_ready), pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": msg(self._guard(self.server_metadata), pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": msg(self._guard(self.model_metadata), pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelInfer": msg(self.model_infer, pb.ModelInferRequest),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self.model_stream_infer, request_deserializer=pb.ModelInferRequest.FromString, response_serializer=None
            ),
            "ModelConfig": msg(self._guard(self.model_config), pb.ModelConfigRequest),
            "ModelStatistics": msg(self._guard(self.model_statistics), pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
            "RepositoryIndex": msg(self._guard(self.repository_index), pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
            "RepositoryModelLoad": msg(
                self._guard(self.repository_model_load), pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse
            ),
            "RepositoryModelUnload": msg(
                self._guard(self.repository_model_unload), pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse
            ),
        }

    async def start(self) -> None:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        limit = cfg.max_body_bytes
        options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 1 if cfg.workers > 1 else 0),
        ]
        server = grpc.aio.server(options=options)
        handlers = self._handlers()
        # Registered methods (grpcio >= 1.63) skip the per-call lookup by name; the generic
        # handler answers the same on any version.
        if hasattr(server, "add_registered_method_handlers"):
            server.add_registered_method_handlers(SERVICE, handlers)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        host = cfg.host
        address = f"[{host}]:{cfg.grpc_port}" if ":" in host else f"{host}:{cfg.grpc_port}"
        try:
            self._port = server.add_insecure_port(address)
        except RuntimeError as e:  # grpcio's way of saying the address is taken or invalid
            raise OSError(f"gRPC cannot listen on {address}: {e}") from None
        await server.start()
        self._server = server

    async def stop(self, grace: float) -> None:
        """Stop accepting; open streams end once the requests they carry are answered; unary calls
        in flight get up to `grace` seconds."""
        server, self._server = self._server, None
        if server is None:
            return
        for stop_stream in list(self._streams):
            stop_stream()
        await server.stop(grace)

    # -- error mapping ---------------------------------------------------------------------------------

    @staticmethod
    async def _abort(context, exc: BaseException):
        err = as_parity_error(exc)
        if not isinstance(exc, ParityError):
            log.error("gRPC: unexpected error", exc_info=exc)
        await context.abort(STATUS_CODES.get(err.grpc_code, _INTERNAL), err.message)

    def _guard(self, fn: Callable) -> Callable:
        """Run a handler; a ParityError becomes its status, anything else INTERNAL."""

        async def handler(request, context):
            try:
                return await fn(request, context)
            except (_AbortError, _CancelledError):
                raise
            except Exception as e:
                await self._abort(context, e)

        handler.__name__ = fn.__name__
        return handler

    # -- inference ---------------------------------------------------------------------------------------

    async def model_infer(self, request: pb.ModelInferRequest, context) -> bytes:
        core = self.core
        loop = self._loop
        try:
            req = decode_infer_request(request, loop)
            remaining = context.time_remaining()
            if remaining is not None:
                deadline = loop.time() + remaining
                if req.deadline is None or deadline < req.deadline:
                    req.deadline = deadline
            fut, plan, t0 = core.submit(req)
        except Exception as e:
            await self._abort(context, e)
        try:
            outputs = await fut
        except _CancelledError as e:  # the client cancelled, or its gRPC deadline passed
            deadline = req.deadline
            if deadline is not None and loop.time() >= deadline - _CLOCK_SLACK_S:
                e = DeadlineExceeded("the request's deadline passed before it was answered")
            core.fail(plan, t0, e)
            raise
        except Exception as e:
            await self._abort(context, core.fail(plan, t0, e))
        try:
            resp = core.finish(req, plan, t0, outputs)
            return self._wire.infer_response(resp.model_name, resp.model_version, resp.id, resp.outputs)
        except Exception as e:
            await self._abort(context, e)

    async def model_stream_infer(self, request_iterator, context) -> None:
        """Each request is answered by one ModelStreamInferResponse, in completion order; a failed
        request is answered with its error_message and the stream goes on.  The stream ends when the
        client half-closes it and every request read is answered; when the server stops, it ends
        once the requests already read are answered, with UNAVAILABLE."""
        core = self.core
        wire = self._wire
        loop = self._loop
        out: asyncio.Queue = asyncio.Queue()  # serialized responses; None ends the stream
        inflight: dict[asyncio.Future, tuple] = {}
        eof = stopping = False

        def done(fut: asyncio.Future) -> None:
            req, plan, t0 = inflight.pop(fut)
            if fut.cancelled():
                return  # the stream is going away; accounted for below
            exc = fut.exception()
            if exc is not None:
                err = core.fail(plan, t0, exc)
                out.put_nowait(_stream_error(err.message, req.model_name, req.id))
            else:
                try:
                    resp = core.finish(req, plan, t0, fut.result())
                    out.put_nowait(_stream_ok(wire.infer_response(resp.model_name, resp.model_version, resp.id, resp.outputs)))
                except Exception as e:  # noqa: BLE001 - an encoding bug must not end the stream
                    log.error("gRPC stream: unexpected error", exc_info=e)
                    out.put_nowait(_stream_error(as_parity_error(e).message, req.model_name, req.id))
            if (eof or stopping) and not inflight:
                out.put_nowait(None)

        async def read_all() -> None:
            nonlocal eof
            try:
                async for request in request_iterator:
                    try:
                        req = decode_infer_request(request, loop)
                        fut, plan, t0 = core.submit(req)
                    except Exception as e:
                        err = as_parity_error(e)
                        if not isinstance(e, ParityError):
                            log.error("gRPC stream: unexpected error", exc_info=e)
                        out.put_nowait(_stream_error(err.message, request.model_name, request.id))
                        continue
                    inflight[fut] = (req, plan, t0)
                    fut.add_done_callback(done)
            finally:
                eof = True
                if not inflight:
                    out.put_nowait(None)

        def stop() -> None:  # called by GrpcTransport.stop
            nonlocal stopping
            stopping = True
            if not inflight:
                out.put_nowait(None)

        reader = loop.create_task(read_all())
        self._streams.add(stop)
        try:
            while (item := await out.get()) is not None:
                await context.write(item)
        finally:
            self._streams.discard(stop)
            if not reader.done():
                reader.cancel()
            elif not reader.cancelled():
                reader.exception()  # retrieved: a failed read ends the stream like a half-close
            for fut, (req, plan, t0) in list(inflight.items()):
                fut.remove_done_callback(done)
                fut.cancel()
                core.fail(plan, t0, _CancelledError())
            inflight.clear()
        if stopping and not eof:
            await context.abort(_UNAVAILABLE, "the server is shutting down; open a new stream (to another replica)")

    # -- server and model information ----------------------------------------------------------------

    async def server_live(self, request, context):
        return pb.ServerLiveResponse(live=self.core.live)

    async def server_ready(self, request, context):
        return pb.ServerReadyResponse(ready=self.core.ready)

    async def model_ready(self, request, context):
        return pb.ModelReadyResponse(ready=self.core.model_ready(request.name, request.version))

    async def server_metadata(self, request, context):
        md = self.core.server_metadata()
        return pb.ServerMetadataResponse(name=md["name"], version=md["version"], extensions=md["extensions"])

    async def model_metadata(self, request, context):
        md = self.core.model_metadata(request.name, request.version)
        TM = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=md["name"],
            versions=md["versions"],
            platform=md["platform"],
            inputs=[TM(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in md["inputs"]],
            outputs=[TM(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in md["outputs"]],
        )

    async def model_config(self, request, context) -> bytes:
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

    async def model_statistics(self, request, context):
        stats = self.core.model_statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[_model_stats(s) for s in stats])

    async def repository_index(self, request, context):
        Index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                Index(name=m["name"], version=m.get("version", ""), state=m.get("state", ""), reason=m.get("reason", ""))
                for m in self.core.repository_index(request.ready)
            ]
        )

    # -- administration ----------------------------------------------------------------------------------

    @staticmethod
    def _token(context) -> str | None:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                return bearer(value if isinstance(value, str) else value.decode("latin-1"))
        return None

    async def repository_model_load(self, request, context):
        token = self._token(context)
        self.core.authorize_admin(token)  # refuse before looking at anything else
        if request.parameters:
            raise Unimplemented(
                f"repository load parameters {sorted(request.parameters)} are not supported; "
                "put the model's config.yaml and files in the repository and load it by name"
            )
        await self.core.load_model(request.model_name, token)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request, context):
        await self.core.unload_model(request.model_name, self._token(context))
        return pb.RepositoryModelUnloadResponse()


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


__all__ = ["GrpcTransport", "STATUS_CODES", "decode_infer_request"]
