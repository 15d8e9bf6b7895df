"""The reference gRPC transport: `inference.GRPCInferenceService` (KServe v2 / Triton) on grpcio's
asyncio API, running on the server's event loop (uvloop).

What is gRPC-specific but not grpcio-specific (decoding requests, encoding responses, the
non-inference methods) lives in `grpc_service`, shared with the fast transport; this module maps
grpcio's calls and contexts onto it and `ParityError`s onto grpcio's status codes.  The core is
called through submit / finish / fail, with no extra task per request.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable

import grpc
import grpc.aio

from parity._proto.inference import grpc_service_pb2 as pb
from parity.config import ServerConfig
from parity.errors import DeadlineExceeded, GrpcCode, ParityError, as_parity_error
from parity.serving import clock
from parity.serving.core import InferenceCore, bearer
from parity.serving.transport.grpc_service import (
    FEATURE_SERVICE,
    MONITORING_SERVICE,
    SERVICE,
    GrpcService,
    Wire,
    decode_infer_request,
    stream_error,
    stream_ok,
)

log = logging.getLogger("parity.grpc")

# Our status codes -> grpcio's enum (grpc.StatusCode values are (number, name) pairs).
_STATUS: dict[int, grpc.StatusCode] = {sc.value[0]: sc for sc in grpc.StatusCode}
STATUS_CODES: dict[GrpcCode, grpc.StatusCode] = {c: _STATUS[int(c)] for c in GrpcCode}
_INTERNAL = grpc.StatusCode.INTERNAL
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_AbortError = grpc.aio.AbortError
_CancelledError = asyncio.CancelledError
# grpcio cancels a call whose deadline passed; a cancellation this close to the request's deadline
# is counted as a timeout, not as a client cancel (uvloop's clock ticks in milliseconds).
_CLOCK_SLACK_S = 0.005


def _serialize(response) -> bytes:
    return response if type(response) is bytes else response.SerializeToString()


# -- the transport -------------------------------------------------------------------------------------


class GrpcTransport:
    name = "grpc"

    def __init__(self, core: InferenceCore, config: ServerConfig):
        self.core = core
        self.config = config
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port = 0
        self.service = GrpcService(core)
        self._wire = Wire()
        self._streams: set[Callable[[], None]] = set()  # open ModelStreamInfer calls: their stop()

    @property
    def port(self) -> int:
        return self._port

    def _handlers(self) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
        """Service name -> method name -> handler."""
        uu = grpc.unary_unary_rpc_method_handler

        def msg(behavior, request_cls):
            # responses are messages or their serialized bytes: both leave as bytes
            return uu(behavior, request_deserializer=request_cls.FromString, response_serializer=_serialize)

        handlers = {name: msg(self._guard(fn), cls) for name, (cls, fn) in self.service.methods().items()}
        handlers["ModelInfer"] = msg(self.model_infer, pb.ModelInferRequest)
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self.model_stream_infer, request_deserializer=pb.ModelInferRequest.FromString, response_serializer=None
        )
        features = {name: msg(self._guard(fn), cls) for name, (cls, fn) in self.service.feature_methods().items()}
        monitoring = {name: msg(self._guard(fn), cls) for name, (cls, fn) in self.service.monitoring_methods().items()}
        return {SERVICE: handlers, FEATURE_SERVICE: features, MONITORING_SERVICE: monitoring}

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
        # Registered methods (grpcio >= 1.63) skip the per-call lookup by name; the generic
        # handler answers the same on any version.
        for service, handlers in self._handlers().items():
            if hasattr(server, "add_registered_method_handlers"):
                server.add_registered_method_handlers(service, handlers)
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        host = cfg.host
        address = f"[{host}]:{cfg.grpc_port}" if ":" in host else f"{host}:{cfg.grpc_port}"
        try:
            if cfg.tls_cert_file:
                creds = grpc.ssl_server_credentials(
                    [(Path(cfg.tls_key_file).read_bytes(), Path(cfg.tls_cert_file).read_bytes())]
                )
                self._port = server.add_secure_port(address, creds)
            else:
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

    @staticmethod
    def _token(context) -> str | None:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                return bearer(value if isinstance(value, str) else value.decode("latin-1"))
        return None

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
                return await fn(request, self._token(context))
            except (_AbortError, _CancelledError):
                raise
            except Exception as e:
                await self._abort(context, e)

        handler.__name__ = fn.__name__
        return handler

    # -- inference ---------------------------------------------------------------------------------------

    async def model_infer(self, request: pb.ModelInferRequest, context) -> bytes:
        core = self.core
        try:
            req = decode_infer_request(request)
            remaining = context.time_remaining()
            if remaining is not None:
                deadline = clock.now() + remaining
                if req.deadline is None or deadline < req.deadline:
                    req.deadline = deadline
            fut, plan, t0 = core.submit(req)
        except Exception as e:
            await self._abort(context, e)
        try:
            outputs = await fut
        except _CancelledError as e:  # the client cancelled, or its gRPC deadline passed
            deadline = req.deadline
            if deadline is not None and clock.now() >= deadline - _CLOCK_SLACK_S:
                e = DeadlineExceeded("the request's deadline passed before it was answered")
            core.fail(plan, t0, e)
            raise
        except Exception as e:
            await self._abort(context, core.fail(plan, t0, e))
        try:
            core.succeeded(plan, t0)
            return self._wire.encode(plan.model_name, plan.label, req.id, outputs, plan.output_types)
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
                out.put_nowait(stream_error(err.message, req.model_name, req.id))
            else:
                try:
                    core.succeeded(plan, t0)
                    out.put_nowait(stream_ok(wire.encode(plan.model_name, plan.label, req.id, fut.result(), plan.output_types)))
                except Exception as e:  # noqa: BLE001 - an encoding bug must not end the stream
                    log.error("gRPC stream: unexpected error", exc_info=e)
                    out.put_nowait(stream_error(as_parity_error(e).message, req.model_name, req.id))
            if (eof or stopping) and not inflight:
                out.put_nowait(None)

        async def read_all() -> None:
            nonlocal eof
            try:
                async for request in request_iterator:
                    try:
                        req = decode_infer_request(request)
                        fut, plan, t0 = core.submit(req)
                    except Exception as e:
                        err = as_parity_error(e)
                        if not isinstance(e, ParityError):
                            log.error("gRPC stream: unexpected error", exc_info=e)
                        out.put_nowait(stream_error(err.message, request.model_name, request.id))
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

__all__ = ["GrpcTransport", "STATUS_CODES", "decode_infer_request"]
