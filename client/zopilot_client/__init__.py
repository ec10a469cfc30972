"""Python client for the zopilotgpu gRPC inference server.

>>> from zopilot_client import Client
>>> with Client("127.0.0.1:50051") as client:
...     for chunk in client.generate_stream("Once upon a time", max_new_tokens=32):
...         print(chunk.text, end="", flush=True)

``AsyncClient`` is the asyncio twin with the same methods. Failed calls raise the
subclasses of ``ZopilotError`` (see ``zopilot_client._exceptions`` for the tree).
Needs only grpcio, protobuf and grpcio-status: never torch.
"""

from __future__ import annotations

from ._async_client import AsyncClient, AsyncGenerateStream
from ._base import DEFAULT_TARGET
from ._channel import TLS, RetryPolicy
from ._client import Client, GenerateStream
from ._exceptions import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Overloaded,
    PermissionDenied,
    RpcError,
    ServerError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    ZopilotError,
)
from ._requests import CallOptions, GenerateOptions, GenerateParams, ParseOptions, TokenizeOptions
from ._results import (
    AdapterInfo,
    ChatMessage,
    DocumentChunk,
    DocumentMetadata,
    FinishReason,
    GenerateChunk,
    GenerateResult,
    HealthStatus,
    KvCache,
    ModelInfo,
    OutputFormat,
    ParsedDocument,
    Quantization,
    Timings,
    TokenDetail,
    TokenizeResult,
    TopToken,
    Usage,
)
from ._version import __version__

__all__ = [
    "DEFAULT_TARGET",
    "TLS",
    "AdapterInfo",
    "AsyncClient",
    "AsyncGenerateStream",
    "CallOptions",
    "Cancelled",
    "ChatMessage",
    "Client",
    "DeadlineExceeded",
    "DocumentChunk",
    "DocumentMetadata",
    "FailedPrecondition",
    "FieldViolation",
    "FinishReason",
    "GenerateChunk",
    "GenerateOptions",
    "GenerateParams",
    "GenerateResult",
    "GenerateStream",
    "HealthStatus",
    "InvalidArgument",
    "KvCache",
    "ModelInfo",
    "NotFound",
    "OutputFormat",
    "Overloaded",
    "ParseOptions",
    "ParsedDocument",
    "PermissionDenied",
    "Quantization",
    "RetryPolicy",
    "RpcError",
    "ServerError",
    "Timings",
    "TokenDetail",
    "TokenizeOptions",
    "TokenizeResult",
    "TopToken",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Usage",
    "ZopilotError",
    "__version__",
]
