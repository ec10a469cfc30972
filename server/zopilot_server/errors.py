"""gRPC statuses as exceptions: ServiceError and its kinds, with their rich details.

Servicers and request validation raise ServiceError; domain code raises its own
exceptions (defined in the domain modules, free of gRPC), and ``error_table.STATUS_TABLE``
says, in one place, which status each one gets. The chain's ``ErrorMapping`` link
(rpc_chain.py) turns either into a status with rich details (google.rpc.BadRequest,
RetryInfo) in the standard ``grpc-status-details-bin`` trailer, which grpcurl and
grpcio-status clients decode. Anything unexpected becomes INTERNAL, logged with the
request id, and the server keeps serving.

This module imports nothing of ours: the RPC edge of both packages (validation,
servicers) imports it without tying generation and documents together.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field (``field`` uses the proto field name, e.g. ``top_p``)."""

    field: str
    description: str


class ServiceError(Exception):
    """An error with a definite gRPC status. ``details`` are packed into the status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # Set when retrying later helps: sent as RetryInfo and as grpc-retry-pushback-ms.
    retry_after_ms: int | None = None

    def __init__(
        self, message: str, *, code: grpc.StatusCode | None = None, details: Sequence[Any] = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = tuple(details)


# A hostile request can be wrong in a million ways: report the first few, each cut short,
# so the status message and its BadRequest trailer stay small (well under the 8 KiB
# header limit clients apply by default).
MAX_REPORTED_VIOLATIONS = 16
MAX_VIOLATION_CHARS = 200
MAX_ID_CHARS = 128  # request_id, in every service
_LOG_TEXT_CHARS = 80


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def loggable(text: str, limit: int = _LOG_TEXT_CHARS) -> str:
    """Client text made safe for one log line: control characters (newlines that could
    forge log lines, terminal escapes) escaped, and cut to ``limit`` characters."""
    escaped = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return _clip(escaped, limit)


def request_id_problem(value: str) -> str | None:
    """Why ``value`` cannot be a request_id (None when it can): echoed in every response
    and written to logs, so it must be short and printable."""
    if len(value) > MAX_ID_CHARS:
        return f"is longer than {MAX_ID_CHARS} characters"
    if not value.isprintable():
        return "must contain printable characters only"
    return None


class InvalidArgument(ServiceError):
    """INVALID_ARGUMENT with a google.rpc.BadRequest listing the bad fields (at most
    ``MAX_REPORTED_VIOLATIONS``, each description at most ``MAX_VIOLATION_CHARS``)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        total = len(violations)
        shown = [
            FieldViolation(_clip(v.field, 64), _clip(v.description, MAX_VIOLATION_CHARS))
            for v in violations[:MAX_REPORTED_VIOLATIONS]
        ]
        self.violations = tuple(shown)
        message = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        if total > len(shown):
            message += f"; and {total - len(shown)} more problems"
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in self.violations
            ]
        )
        super().__init__(message, details=[bad_request])

    @classmethod
    def single(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class _Retryable(ServiceError):
    """A status that carries RetryInfo when waiting and retrying helps."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        details = []
        if retry_after_s is not None:
            self.retry_after_ms = max(1, round(retry_after_s * 1000))
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(self.retry_after_ms)
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        super().__init__(message, details=details)


class ResourceExhausted(_Retryable):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(_Retryable):
    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Message(str, enum.Enum):
    """Validation messages, in one place so the wording stays consistent."""

    REQUIRED = "is required"
    PROMPT_XOR_MESSAGES = "set either prompt or messages, not both"
    PROMPT_OR_MESSAGES = "set prompt or messages"
    NO_CHAT_TEMPLATE = "the model has no chat template; send a raw prompt instead"
    EMPTY_ROLE = "role must not be empty"
    OUT_OF_RANGE = "must be in {range} (got {value})"
    NEGATIVE = "must be >= 0 (got {value})"
    TOO_MANY = "at most {limit} allowed (got {value})"
    EMPTY_ITEM = "must not contain an empty string (index {index})"
    TOO_LONG_ITEM = "index {index} is longer than {limit} characters"
    TOO_MANY_CHARS = (
        "has {value} characters; the limit is {limit} (--max-input-chars) before tokenizing"
    )
    TOO_MANY_BYTES = "is {value} bytes; the limit is {limit} (--max-constraint-bytes)"
    EMPTY_AFTER_TOKENIZE = "tokenizes to zero tokens"
    TOKEN_OUT_OF_VOCAB = "token id {value} at index {index} is outside the vocabulary [0, {limit})"
    TOKENS_XOR_TEXT = "set token ids or text, not both"
    PROMPT_TOO_LONG = (
        "prompt has {tokens} tokens; with max_new_tokens {max_new} that exceeds the model "
        "context of {context} tokens. Shorten it, lower max_new_tokens or set "
        "truncate_input_tokens"
    )

    def format(self, **kwargs: object) -> str:  # type: ignore[override]
        return self.value.format(**kwargs)


def internal_error(exc: BaseException, request_id: str) -> ServiceError:
    """INTERNAL for a bug: logged in full with the request id, only the id sent back."""
    request_id = loggable(request_id)
    log.error("request %s: internal error", request_id or "-", exc_info=exc)
    suffix = f" (request id {request_id})" if request_id else ""
    return ServiceError(
        f"internal error{suffix}; see the server log", code=grpc.StatusCode.INTERNAL
    )


def status_trailer(error: ServiceError) -> tuple[tuple[str, str | bytes], ...]:
    """Trailers for ``error``: ``grpc-status-details-bin`` with its rich details and, when
    retrying later helps, ``grpc-retry-pushback-ms``, the hint gRPC's built-in retry policy
    follows (RetryInfo is for clients that read details; gRPC itself only reads this)."""
    trailers: list[tuple[str, str | bytes]] = []
    if error.details:
        status = status_pb2.Status(code=getattr(code_pb2, error.code.name), message=error.message)
        for detail in error.details:
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
        trailers.append(("grpc-status-details-bin", status.SerializeToString()))
    if error.retry_after_ms is not None:
        trailers.append(("grpc-retry-pushback-ms", str(error.retry_after_ms)))
    return tuple(trailers)


class MalformedRequest:
    """Stands in for request bytes that did not parse. A deserializer that raised would
    give grpc.aio's UNKNOWN and an ERROR traceback per call; this value reaches the
    handler, which answers INVALID_ARGUMENT (rpc_chain.MalformedRequests)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``parse`` that returns a MalformedRequest instead of raising on the client's bytes."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError and friends: client bytes
            return MalformedRequest(exc)

    return deserialize


def refuse_malformed(request: MalformedRequest) -> ServiceError:
    """The answer to a MalformedRequest: INVALID_ARGUMENT, logged at DEBUG only."""
    log.debug("malformed request message: %s", type(request.error).__name__)
    return ServiceError(
        "the request is not a valid protobuf message", code=grpc.StatusCode.INVALID_ARGUMENT
    )


async def abort(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    await context.abort(error.code, error.message, trailing_metadata=status_trailer(error))
