"""The asyncio client: the thin awaiting call layer over BaseClient (grpc.aio)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio

from ._base import AsyncClosesOnExit, BaseClient, PreparedCall, StreamBase
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


class AsyncGenerateStream(StreamBase, AsyncClosesOnExit):
    """An async iterator of GenerateChunk. Use it in an ``async with`` block (or call
    ``aclose()``) to cancel the generation on the server when you stop reading early."""

    def __aiter__(self) -> AsyncGenerateStream:
        return self

    async def __anext__(self) -> GenerateChunk:
        if self._closed:
            raise StopAsyncIteration
        try:
            response = await self._call.read()
        except grpc.RpcError as exc:
            error = self._on_error(exc)
            if error is None:
                raise StopAsyncIteration from None
            raise error from None
        except asyncio.CancelledError:  # the reading task was cancelled: so is the RPC
            self.cancel()
            raise
        if response is grpc.aio.EOF:
            self._closed = True
            raise StopAsyncIteration
        return self._on_response(response)

    async def aclose(self) -> None:
        """Stop reading: cancel the RPC (the server stops generating)."""
        self.cancel()


class AsyncClient(BaseClient, AsyncClosesOnExit):
    """The asyncio twin of ``Client``: the same constructor, methods and results.

    Create it inside a running event loop; use ``async with`` or ``await aclose()``.
    """

    _grpc: Any = grpc.aio

    async def _call(self, prepared: PreparedCall[T]) -> T:
        try:
            response = await prepared.method(prepared.request, **prepared.options)
        except grpc.RpcError as exc:
            raise from_grpc_error(exc) from None
        return prepared.parse(response)

    async def generate(
        self, prompt: PromptLike, /, **options: Unpack[GenerateOptions]
    ) -> GenerateResult:
        """Generate the whole text for a prompt (str) or chat messages; see GenerateParams."""
        return await self._call(self._prepare_generate("generate", prompt, options))

    def generate_stream(
        self, prompt: PromptLike, /, **options: Unpack[GenerateOptions]
    ) -> AsyncGenerateStream:
        """Stream the generation (``async for``); leaving early cancels it on the server."""
        prepared = self._prepare_generate("generate_stream", prompt, options)
        return AsyncGenerateStream(prepared.method(prepared.request, **prepared.options))

    async def tokenize(self, text: str, /, **options: Unpack[TokenizeOptions]) -> TokenizeResult:
        """Tokenize ``text`` with the served model's tokenizer."""
        return await self._call(self._prepare_tokenize(text, options))

    async def model_info(self, **options: Unpack[CallOptions]) -> ModelInfo:
        """Describe the served model and the server's generation limits."""
        return await self._call(self._prepare_model_info(options))

    async def parse_document(
        self, source: DocumentSource, /, **options: Unpack[ParseOptions]
    ) -> ParsedDocument:
        """Parse a document (a path, bytes or a binary file) into the requested formats."""
        return await self._call(self._prepare_parse(source, options))

    async def health(self, service: str = "", **options: Unpack[CallOptions]) -> HealthStatus:
        """The grpc.health.v1 status of the server ("") or of one service."""
        return await self._call(self._prepare_health(service, options))

    async def aclose(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()
