"""The exception tree: one class per way a call can fail, mapped from gRPC status codes.

::

    ZopilotError                    everything this library raises on a failed call
    └── RpcError                    the call ended with a non-OK gRPC status
        ├── InvalidArgument         INVALID_ARGUMENT, OUT_OF_RANGE: .field_violations
        ├── NotFound                NOT_FOUND (e.g. health of an unknown service)
        ├── Unauthenticated         UNAUTHENTICATED: missing or wrong API key
        ├── PermissionDenied        PERMISSION_DENIED
        ├── FailedPrecondition      FAILED_PRECONDITION (e.g. OCR models not installed)
        ├── Overloaded              RESOURCE_EXHAUSTED: .retry_after (from RetryInfo)
        ├── Unavailable             UNAVAILABLE: unreachable, model loading, draining
        ├── DeadlineExceeded        DEADLINE_EXCEEDED: the call's timeout passed
        ├── Cancelled               CANCELLED
        ├── Unimplemented           UNIMPLEMENTED: the server lacks this RPC
        └── ServerError             INTERNAL, UNKNOWN, DATA_LOSS: a bug on the server

Every RpcError carries ``.code`` (grpc.StatusCode), ``.message``, ``.details`` (the
unpacked ``google.rpc`` detail messages from the ``grpc-status-details-bin`` trailer)
and ``.grpc_error`` (the original grpc.RpcError). Codes without a class of their own
(ABORTED, ALREADY_EXISTS) raise a plain RpcError. Mistakes that never reach the network
(a wrong argument type, a missing file) raise the usual TypeError / ValueError / OSError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message as pb_message
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class ZopilotError(Exception):
    """Base class of the errors this library raises."""


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field; ``field`` is the request field (= keyword argument) name."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


class RpcError(ZopilotError):
    """The server (or the gRPC machinery on either side) ended the call with an error."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        details: tuple[pb_message.Message, ...] = (),
        grpc_error: grpc.RpcError | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details
        self.grpc_error = grpc_error

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def detail(self, kind: type[Any]) -> Any | None:
        """The first detail message of type ``kind`` (e.g. ``error_details_pb2.ErrorInfo``)."""
        return next((d for d in self.details if isinstance(d, kind)), None)


class InvalidArgument(RpcError):
    """The request was rejected; ``field_violations`` lists every bad field at once."""

    @property
    def field_violations(self) -> tuple[FieldViolation, ...]:
        bad_request = self.detail(error_details_pb2.BadRequest)
        if bad_request is None:
            return ()
        return tuple(FieldViolation(v.field, v.description) for v in bad_request.field_violations)


class NotFound(RpcError):
    """The named thing does not exist (e.g. health of a service the server lacks)."""


class Unauthenticated(RpcError):
    """Missing or wrong API key (``Client(api_key=...)``)."""


class PermissionDenied(RpcError):
    """Authenticated, but not allowed to do this."""


class FailedPrecondition(RpcError):
    """The server cannot do this in its current setup (e.g. OCR models missing)."""


class Overloaded(RpcError):
    """The server is busy (queue full) or out of memory; retrying later may succeed.

    ``retry_after`` is the server's hint in seconds (google.rpc.RetryInfo), or None. It
    is raised after the client's own retries (see ``RetryPolicy``) were used up.
    """

    @property
    def retry_after(self) -> float | None:
        info = self.detail(error_details_pb2.RetryInfo)
        if info is None or not info.HasField("retry_delay"):
            return None
        return info.retry_delay.ToTimedelta().total_seconds()


class Unavailable(RpcError):
    """Server unreachable, still loading its model, or draining; retrying may succeed."""


class DeadlineExceeded(RpcError):
    """The call's ``timeout`` passed before the server answered."""


class Cancelled(RpcError):
    """The call was cancelled (by this process or the server)."""


class Unimplemented(RpcError):
    """The server does not implement this RPC (an older or partial server)."""


class ServerError(RpcError):
    """INTERNAL, UNKNOWN or DATA_LOSS: a bug; the server log has the request id."""


_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: ServerError,
    grpc.StatusCode.UNKNOWN: ServerError,
    grpc.StatusCode.DATA_LOSS: ServerError,
}

# The google.rpc detail messages we know how to unpack from a status.
_DETAIL_TYPES: tuple[type[pb_message.Message], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.ErrorInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.QuotaFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RequestInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)


def error_class(code: grpc.StatusCode) -> type[RpcError]:
    """The exception class raised for ``code``."""
    return _BY_CODE.get(code, RpcError)


def from_grpc_error(error: grpc.RpcError) -> RpcError:
    """Translate a grpc (sync or aio) RpcError into this library's tree."""
    code = _call_attr(error, "code") or grpc.StatusCode.UNKNOWN
    message = _call_attr(error, "details") or code.name.lower().replace("_", " ")
    details = _unpack_details(_call_attr(error, "trailing_metadata") or ())
    return error_class(code)(message, code=code, details=details, grpc_error=error)


def _call_attr(error: grpc.RpcError, name: str) -> Any:
    """``error.code()`` and friends; a bare grpc.RpcError (no call) has none of them."""
    method = getattr(error, name, None)
    return method() if callable(method) else None


def _unpack_details(trailing_metadata: Any) -> tuple[pb_message.Message, ...]:
    """The detail messages of the google.rpc.Status in the trailers, if any."""
    for key, value in trailing_metadata:
        if key == STATUS_DETAILS_KEY:
            status = status_pb2.Status.FromString(value)
            return tuple(_unpack(any_detail) for any_detail in status.details)
    return ()


def _unpack(any_detail: Any) -> pb_message.Message:
    for kind in _DETAIL_TYPES:
        if any_detail.Is(kind.DESCRIPTOR):
            unpacked = kind()
            any_detail.Unpack(unpacked)
            return unpacked
    return any_detail  # unknown detail type: keep the packed Any
