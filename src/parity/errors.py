"""One error tree for the whole server.

Each error knows its gRPC status code and its HTTP status; transports translate a raised error
once, at their edge, and never decide codes themselves.  Messages say what to fix.
"""

from __future__ import annotations

from enum import IntEnum


class GrpcCode(IntEnum):
    """gRPC status codes (numbers fixed by the gRPC specification)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class ParityError(Exception):
    """Base of every error the server answers with.  Subclasses set the codes and the metric reason."""

    grpc_code: GrpcCode = GrpcCode.INTERNAL
    http_status: int = 500
    reason: str = "internal"  # the `reason` label of parity_request_failure_total

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(ParityError):
    grpc_code = GrpcCode.INVALID_ARGUMENT
    http_status = 400
    reason = "bad_input"


class NotFound(ParityError):
    grpc_code = GrpcCode.NOT_FOUND
    http_status = 404
    reason = "not_found"


class Unavailable(ParityError):
    """Queue full, model not ready, server draining, store down: retry later or elsewhere."""

    grpc_code = GrpcCode.UNAVAILABLE
    http_status = 503
    reason = "rejected"


class DeadlineExceeded(ParityError):
    grpc_code = GrpcCode.DEADLINE_EXCEEDED
    http_status = 504
    reason = "timeout"


class Cancelled(ParityError):
    grpc_code = GrpcCode.CANCELLED
    http_status = 499
    reason = "cancelled"


class Unauthenticated(ParityError):
    grpc_code = GrpcCode.UNAUTHENTICATED
    http_status = 401
    reason = "unauthenticated"


class PermissionDenied(ParityError):
    grpc_code = GrpcCode.PERMISSION_DENIED
    http_status = 403
    reason = "permission_denied"


class PayloadTooLarge(InvalidInput):
    """A message or body larger than the configured limit (answered like any other bad input)."""


class Conflict(ParityError):
    """A write based on a state that changed meanwhile (compare-and-set lost)."""

    grpc_code = GrpcCode.ABORTED
    http_status = 409
    reason = "conflict"


class Unimplemented(ParityError):
    grpc_code = GrpcCode.UNIMPLEMENTED
    http_status = 501
    reason = "unimplemented"


class InternalError(ParityError):
    """A bug or a runtime failure inside a model runner."""


class ConfigError(ParityError):
    """A configuration file with an error; the message names the file and the field."""

    grpc_code = GrpcCode.INVALID_ARGUMENT
    http_status = 400
    reason = "bad_config"

    def __init__(self, source: str, field: str, problem: str):
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.field = field
        self.problem = problem


class ModelLoadError(ParityError):
    """A model version failed to load; the previous version (if any) keeps serving."""

    grpc_code = GrpcCode.INTERNAL
    http_status = 500
    reason = "load_failed"


def as_parity_error(exc: BaseException) -> ParityError:
    """Map any exception to a ParityError: ours pass through, anything else is an internal error."""
    if isinstance(exc, ParityError):
        return exc
    return InternalError(f"internal error: {type(exc).__name__}: {exc}")
