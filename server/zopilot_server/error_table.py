"""Which gRPC status each domain exception gets: ``STATUS_TABLE``, in one place.

Domain modules (generation/domain.py, documents/domain.py) define their exceptions free
of gRPC; this table, at the RPC edge above both packages, maps them to the statuses of
errors.py, and the chain's ``ErrorMapping`` link (rpc_chain.py) applies it to every call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from .documents.domain import (
    DocumentRejected,
    OcrModelsMissing,
    ParserBusy,
    ParserClosed,
    ParserOutOfMemory,
    ParseTimeout,
    WorkersCannotStart,
)
from .errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    internal_error,
)
from .generation.domain import (
    AdapterAdminDisabled,
    AdapterExists,
    AdapterLimit,
    AdapterNotFound,
    AdapterRejected,
    ConstraintUnavailable,
    EngineClosed,
    GenerationFailed,
    InvalidConstraint,
    ModelLoading,
    OutOfMemory,
    PromptTooLong,
    QueueFull,
    RequestTooLong,
)


def _adapter_rejected(exc: AdapterRejected, _: str) -> ServiceError:
    """Bad files or request: INVALID_ARGUMENT on the field; does not fit: FAILED_PRECONDITION."""
    if exc.fits:
        return InvalidArgument.single(exc.field, exc.message)
    return FailedPrecondition(exc.message)


_OUT_OF_MEMORY = "out of memory while generating; retry with a shorter request"

# Exception class -> its status, given the exception and the request id. Checked in
# order with isinstance, so a subclass must come before its base (test_generation_errors keeps
# that true): OutOfMemory before GenerationFailed.
STATUS_TABLE: tuple[tuple[type[BaseException], Callable[[Any, str], ServiceError]], ...] = (
    (ServiceError, lambda e, _: e),
    (OutOfMemory, lambda e, _: ResourceExhausted(_OUT_OF_MEMORY)),
    (QueueFull, lambda e, _: ResourceExhausted(str(e), retry_after_s=e.retry_after_s)),
    (EngineClosed, lambda e, _: Unavailable(str(e), retry_after_s=e.retry_after_s)),
    (ModelLoading, lambda e, _: Unavailable(str(e))),
    (GenerationFailed, lambda e, request_id: internal_error(e, e.request_id or request_id)),
    (InvalidConstraint, lambda e, _: InvalidArgument.single(e.field, e.message)),
    (RequestTooLong, lambda e, _: InvalidArgument.single("max_new_tokens", str(e))),
    (ConstraintUnavailable, lambda e, _: FailedPrecondition(str(e))),
    (AdapterNotFound, lambda e, _: ServiceError(str(e), code=grpc.StatusCode.NOT_FOUND)),
    (AdapterRejected, _adapter_rejected),
    (AdapterExists, lambda e, _: ServiceError(str(e), code=grpc.StatusCode.ALREADY_EXISTS)),
    (AdapterLimit, lambda e, _: ResourceExhausted(str(e))),
    (
        AdapterAdminDisabled,
        lambda e, _: ServiceError(str(e), code=grpc.StatusCode.PERMISSION_DENIED),
    ),
    (PromptTooLong, lambda e, _: InvalidArgument.single("prompt", str(e))),
    (DocumentRejected, lambda e, _: InvalidArgument.single(e.field, e.message)),
    (OcrModelsMissing, lambda e, _: FailedPrecondition(str(e))),
    (ParseTimeout, lambda e, _: DeadlineExceeded(str(e))),
    (ParserBusy, lambda e, _: ResourceExhausted(str(e), retry_after_s=e.retry_after_s)),
    (ParserClosed, lambda e, _: Unavailable(str(e))),
    (WorkersCannotStart, lambda e, _: FailedPrecondition(str(e))),
    (ParserOutOfMemory, lambda e, _: ResourceExhausted(str(e))),
)


def to_service_error(exc: BaseException, request_id: str = "") -> ServiceError:
    """Map any exception to a ServiceError by ``STATUS_TABLE``; others become INTERNAL."""
    for exc_type, translate in STATUS_TABLE:
        if isinstance(exc, exc_type):
            return translate(exc, request_id)
    return internal_error(exc, request_id)
