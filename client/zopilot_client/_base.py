"""What Client and AsyncClient share: configuration, calls prepared as data, streams.

Each public method of the two clients is one line: it asks the base to *prepare* a call
(the multi-callable, the request, the call options and how to parse the answer) and
hands it to its own thin call layer: blocking in Client, awaited in AsyncClient. So
request building, result parsing and error mapping are written once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from . import _health, _requests
from ._channel import RetryPolicy, TLSLike, channel_credentials, channel_options
from ._exceptions import RpcError, from_grpc_error
from ._requests import CallOptions, DocumentSource, split_options
from ._results import (
    GenerateChunk,
    GenerateResult,
    HealthStatus,
    ModelInfo,
    ParsedDocument,
    PromptLike,
    TokenizeResult,
)
from .pb import documents_pb2, generation_pb2

T = TypeVar("T")
Self = TypeVar("Self")

DEFAULT_TARGET = "127.0.0.1:50051"
# Every call has a deadline unless the caller passes timeout=None: it bounds the call and
# all its retries together, so a server that dies mid-call (or never answers) cannot
# leave a caller waiting forever. Ten minutes covers a 4096-token generation on a CPU.
DEFAULT_TIMEOUT_S = 600.0
_GENERATION = "/zopilot.v1.Generation/"
_DOCUMENTS = "/zopilot.v1.Documents/"

Metadata = Mapping[str, str] | Sequence[tuple[str, str]]


class _Unset:
    """Marks an argument the caller did not pass (None is a meaningful timeout)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class PreparedCall(Generic[T]):
    """One call, ready to go: what to invoke with what, and how to read the answer."""

    method: Any  # a (sync or aio) multi-callable
    request: Any
    options: dict[str, Any]
    parse: Callable[[Any], T]


def _multicallables(channel: Any) -> dict[str, Any]:
    """The RPCs, bound to ``channel``; sync and aio channels share this interface."""
    gen, docs = generation_pb2, documents_pb2

    def unary(path: str, request_type: Any, response_type: Any) -> Any:
        return channel.unary_unary(
            path,
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )

    return {
        "generate_stream": channel.unary_stream(
            _GENERATION + "GenerateStream",
            request_serializer=gen.GenerateRequest.SerializeToString,
            response_deserializer=gen.GenerateResponse.FromString,
        ),
        "generate": unary(_GENERATION + "Generate", gen.GenerateRequest, gen.GenerateResponse),
        "tokenize": unary(_GENERATION + "Tokenize", gen.TokenizeRequest, gen.TokenizeResponse),
        "model_info": unary(_GENERATION + "GetModelInfo", gen.GetModelInfoRequest, gen.ModelInfo),
        "parse_document": unary(
            _DOCUMENTS + "DocumentParse", docs.DocumentParseRequest, docs.DocumentParseResponse
        ),
        "health": unary(
            _health.CHECK_METHOD, _health.HealthCheckRequest, _health.HealthCheckResponse
        ),
    }


def _health_status(response: Any) -> HealthStatus:
    return HealthStatus.from_number(response.status)


class ClosesOnExit:
    """``with`` support for things that ``close()``: a Client and a GenerateStream."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: Self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClosesOnExit:
    """``async with`` support for things that ``aclose()``: AsyncClient and its streams."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self: Self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class BaseClient:
    """Configuration and call preparation shared by Client and AsyncClient."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        tls: TLSLike = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        metadata: Metadata | None = None,
        retry: RetryPolicy | None = RetryPolicy(),  # noqa: B008 - frozen, shared safely
        wait_for_ready: bool = False,
        load_balancing: str = "round_robin",
        options: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self._metadata = _metadata_pairs(metadata)
        if api_key:
            self._metadata.append(("authorization", f"Bearer {api_key}"))
        self._credentials = channel_credentials(tls)
        self._options = channel_options(
            retry=retry, load_balancing=load_balancing, tls=tls, extra=options
        )
        self._channel = self._open_channel()
        self._rpc = _multicallables(self._channel)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r})"

    # grpc or grpc.aio: the only difference in how the two clients open their channel.
    _grpc: Any = grpc

    def _open_channel(self) -> Any:
        if self._credentials is None:
            return self._grpc.insecure_channel(self.target, options=self._options)
        return self._grpc.secure_channel(self.target, self._credentials, options=self._options)

    # -- call options -------------------------------------------------------------------
    def _call_options(self, call: CallOptions) -> dict[str, Any]:
        timeout = call.get("timeout", UNSET)
        metadata = self._metadata + _metadata_pairs(call.get("metadata"))
        return {
            "timeout": self.timeout if timeout is UNSET else timeout,
            "metadata": tuple(metadata) or None,
            "wait_for_ready": call.get("wait_for_ready", self.wait_for_ready),
        }

    def _prepare(
        self, rpc: str, request: Any, call: CallOptions, parse: Callable[[Any], T]
    ) -> PreparedCall[T]:
        return PreparedCall(self._rpc[rpc], request, self._call_options(call), parse)

    # -- one preparer per RPC -----------------------------------------------------------
    def _prepare_generate(
        self, method: str, prompt: PromptLike, options: Mapping[str, Any]
    ) -> PreparedCall[GenerateResult]:
        params, call = split_options(method, options, _requests.GENERATE_PARAMS)
        request = _requests.generate_request(prompt, params)
        return self._prepare(method, request, call, GenerateResult.from_pb)

    def _prepare_tokenize(
        self, text: str, options: Mapping[str, Any]
    ) -> PreparedCall[TokenizeResult]:
        params, call = split_options("tokenize", options, _requests.TOKENIZE_PARAMS)
        request = _requests.tokenize_request(text, params)
        return self._prepare("tokenize", request, call, TokenizeResult.from_pb)

    def _prepare_model_info(self, options: Mapping[str, Any]) -> PreparedCall[ModelInfo]:
        _, call = split_options("model_info", options, _requests.NO_PARAMS)
        request = generation_pb2.GetModelInfoRequest()
        return self._prepare("model_info", request, call, ModelInfo.from_pb)

    def _prepare_parse(
        self, source: DocumentSource, options: Mapping[str, Any]
    ) -> PreparedCall[ParsedDocument]:
        params, call = split_options("parse_document", options, _requests.PARSE_PARAMS)
        request = _requests.parse_request(source, params)
        return self._prepare("parse_document", request, call, ParsedDocument.from_pb)

    def _prepare_health(
        self, service: str, options: Mapping[str, Any]
    ) -> PreparedCall[HealthStatus]:
        _, call = split_options("health", options, _requests.NO_PARAMS)
        request = _health.HealthCheckRequest(service=service)
        return self._prepare("health", request, call, _health_status)


def _metadata_pairs(metadata: Metadata | None) -> list[tuple[str, str]]:
    """gRPC metadata keys must be lowercase; accept a mapping or (key, value) pairs."""
    items = metadata.items() if isinstance(metadata, Mapping) else (metadata or ())
    return [(str(key).lower(), value) for key, value in items]


class StreamBase:
    """What the sync and async generate streams share: bookkeeping and cancellation.

    ``cancel()`` (also ``close()`` / ``aclose()``, leaving the ``with`` block, or the
    stream being garbage collected) cancels the RPC: the server stops generating within
    one decoding step. Iterating a cancelled stream simply ends.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._closed = False
        self._texts: list[str] = []
        self._raw_tokens: list[generation_pb2.TokenDetail] = []
        self._last: generation_pb2.GenerateResponse | None = None

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._texts)

    @property
    def result(self) -> GenerateResult | None:
        """The whole generation, as ``generate()`` would return it, once the stream ended."""
        if self._last is None:
            return None
        merged = generation_pb2.GenerateResponse()
        merged.CopyFrom(self._last)
        merged.text = self.text
        del merged.tokens[:]
        merged.tokens.extend(self._raw_tokens)
        return GenerateResult.from_pb(merged)

    def cancel(self) -> None:
        """Cancel the RPC unless it already ended; idempotent."""
        if not self._closed:
            self._closed = True
            self._call.cancel()

    def __del__(self) -> None:
        # gRPC cancels a collected call too; doing it here says so and does not depend on it.
        with contextlib.suppress(Exception):
            self.cancel()

    def _on_response(self, response: generation_pb2.GenerateResponse) -> GenerateChunk:
        chunk = GenerateChunk.from_pb(response)
        self._texts.append(chunk.text)
        self._raw_tokens.extend(response.tokens)
        if chunk.is_last:
            self._last = response
            self._closed = True
        return chunk

    def _on_error(self, exc: grpc.RpcError) -> RpcError | None:
        """The error to raise, or None when it only reports our own cancellation."""
        was_closed, self._closed = self._closed, True
        return None if was_closed else from_grpc_error(exc)
