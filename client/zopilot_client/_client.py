"""The blocking client: the thin sync call layer over BaseClient."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import grpc

from ._base import BaseClient, ClosesOnExit, PreparedCall, StreamBase
from ._exceptions import from_grpc_error
from ._results import (
    GenerateChunk,
    GenerateResult,
    HealthStatus,
    ModelInfo,
    ParsedDocument,
    PromptLike,
    TokenizeResult,
)

if TYPE_CHECKING:
    from ._requests import (
        CallOptions,
        DocumentSource,
        GenerateOptions,
        ParseOptions,
        TokenizeOptions,
        Unpack,
    )

T = TypeVar("T")


class GenerateStream(StreamBase, ClosesOnExit):
    """An iterator of GenerateChunk. Use it in a ``with`` block (or call ``close()``)
    to cancel the generation on the server when you stop reading early."""

    def __iter__(self) -> GenerateStream:
        return self

    def __next__(self) -> GenerateChunk:
        if self._closed:
            raise StopIteration
        try:
            response = next(self._call)
        except StopIteration:
            self._closed = True
            raise
        except grpc.RpcError as exc:
            error = self._on_error(exc)
            if error is None:
                raise StopIteration from None
            raise error from None
        return self._on_response(response)

    def close(self) -> None:
        """Stop reading: cancel the RPC (the server stops generating)."""
        self.cancel()


class Client(BaseClient, ClosesOnExit):
    """A blocking client for one zopilotgpu server (or several, load balanced).

    ``target``: ``host:port``, several addresses (``ipv4:10.0.0.1:50051,10.0.0.2:50051``)
    or a resolver URI (``dns:///zopilot.internal:50051``); calls are spread round robin.
    ``api_key`` travels as ``authorization: Bearer`` metadata (use TLS across networks).
    ``tls``: None/False plaintext, True for TLS with the system roots, or a ``TLS``.
    ``timeout``: default seconds per call, retries included (600; None: no deadline).
    ``metadata``: sent with every call. ``retry``: the RetryPolicy for UNAVAILABLE /
    RESOURCE_EXHAUSTED (None disables retries). ``wait_for_ready``: wait for the server
    instead of failing fast.
    ``options``: extra gRPC channel arguments. Use as a context manager or ``close()``.
    """

    def _call(self, prepared: PreparedCall[T]) -> T:
        try:
            response = prepared.method(prepared.request, **prepared.options)
        except grpc.RpcError as exc:
            raise from_grpc_error(exc) from None
        return prepared.parse(response)

    def generate(self, prompt: PromptLike, /, **options: Unpack[GenerateOptions]) -> GenerateResult:
        """Generate the whole text for a prompt (str) or chat messages; see GenerateParams."""
        return self._call(self._prepare_generate("generate", prompt, options))

    def generate_stream(
        self, prompt: PromptLike, /, **options: Unpack[GenerateOptions]
    ) -> GenerateStream:
        """Stream the generation as GenerateChunks; leaving early cancels it on the server."""
        prepared = self._prepare_generate("generate_stream", prompt, options)
        return GenerateStream(prepared.method(prepared.request, **prepared.options))

    def tokenize(self, text: str, /, **options: Unpack[TokenizeOptions]) -> TokenizeResult:
        """Tokenize ``text`` with the served model's tokenizer."""
        return self._call(self._prepare_tokenize(text, options))

    def model_info(self, **options: Unpack[CallOptions]) -> ModelInfo:
        """Describe the served model and the server's generation limits."""
        return self._call(self._prepare_model_info(options))

    def parse_document(
        self, source: DocumentSource, /, **options: Unpack[ParseOptions]
    ) -> ParsedDocument:
        """Parse a document (a path, bytes or a binary file) into the requested formats."""
        return self._call(self._prepare_parse(source, options))

    def health(self, service: str = "", **options: Unpack[CallOptions]) -> HealthStatus:
        """The grpc.health.v1 status of the server ("") or of one service."""
        return self._call(self._prepare_health(service, options))

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()
