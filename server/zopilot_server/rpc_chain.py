"""One interceptor for every cross-cutting concern of an RPC, in one fixed order.

Each concern is a small ``Link``; ``Chain`` (the only grpc.aio ServerInterceptor of the
server) turns whatever handler grpc found into one uniform shape, an async iterator of
responses, hands it through the links, and turns the result back into the handler's
own shape. The streaming-shape dispatch (unary or stream requests x unary or stream
responses; a handler that is an async generator, a coroutine that returns its answer,
or a coroutine that answers with ``context.write`` like health ``Watch``) is written
here once, so a link never asks which shape it wraps. (A ``context.write`` handler sends
its responses itself: links wrap its call, its end and its errors, but do not see each
response; only health ``Watch`` answers so, and no link reads health responses.)

The order, outermost first (``app.rpc_links`` builds it), and why:

1. ``metrics.Metrics``: every zopilot.v1 call's outcome is counted, the refused ones
   too (UNAUTHENTICATED, malformed bytes), with the status the links inside gave it.
2. ``auth.ApiKeyAuth`` (only with an API key): a refused caller is answered before
   anything reads its request, malformed or not; health stays open for probes.
3. ``auth.HealthWatchLimit``: at most ``--max-health-watches`` health ``Watch`` streams
   without a valid key at a time; beyond, RESOURCE_EXHAUSTED.
4. ``MalformedRequests``: bytes that are not a valid request message reach the handler
   as a ``MalformedRequest`` (a lenient deserializer) and get INVALID_ARGUMENT here.
5. ``tracing.Tracing``: traceparent logging and spans, for calls that passed the
   checks above only, so anonymous or garbled calls cannot fill the log.
6. ``ErrorMapping``: innermost, next to the servicer: any exception a handler raises
   becomes its status by ``error_table.STATUS_TABLE``; a bug becomes INTERNAL, logged
   with the request id.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from .error_table import to_service_error
from .errors import MalformedRequest, abort, lenient, refuse_malformed

# What a link wraps and returns: (request, context) -> the responses, as an async
# iterator (one item for a unary response). For a request stream, ``request`` is the
# async iterator of requests.
Behavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]
Deserializer = Callable[[bytes], Any] | None


@dataclass(frozen=True)
class Call:
    """What a link may know about a call before it runs."""

    method: str  # "/package.Service/Method"
    metadata: tuple[tuple[str, str | bytes], ...]
    request_streaming: bool
    response_streaming: bool
    found: bool  # False: no service has this method (the stand-in answers UNIMPLEMENTED)

    @property
    def service(self) -> str:
        return self.method.lstrip("/").split("/", 1)[0]

    def values(self, key: str) -> list[str | bytes]:
        """Every value of the metadata ``key`` (a client may send one key twice)."""
        return [value for name, value in self.metadata if name == key]

    def value(self, key: str) -> str | bytes | None:
        """The last value of ``key`` (None when absent)."""
        found = self.values(key)
        return found[-1] if found else None


class Link:
    """One concern of the chain. Both hooks default to "leave the call alone"."""

    def deserializer(self, call: Call, parse: Deserializer) -> Deserializer:
        """The request deserializer to use instead of ``parse``."""
        return parse

    def wrap(self, call: Call, inner: Behavior) -> Behavior:
        """The behaviour to run instead of ``inner`` (usually one that calls it)."""
        return inner


class MalformedRequests(Link):
    """Bytes that are not a valid request message get INVALID_ARGUMENT, quietly.

    grpc.aio parses a request before any handler runs and answers a parse failure with
    UNKNOWN plus an ERROR traceback per call. With a lenient deserializer the failure
    reaches the handler as a value, answered here; for a request stream (reflection)
    the stream ends at the first bad message, unless the method is one of
    ``answered_by_handler``: a stream multiplexing independent requests (Triton's
    ModelStreamInfer) answers a bad message with an error response and goes on.
    """

    def __init__(self, answered_by_handler: frozenset[str] = frozenset()) -> None:
        self._answered_by_handler = answered_by_handler

    def deserializer(self, call: Call, parse: Deserializer) -> Deserializer:
        return parse if parse is None else lenient(parse)

    def wrap(self, call: Call, inner: Behavior) -> Behavior:
        if call.request_streaming and call.method in self._answered_by_handler:
            return inner
        if call.request_streaming:

            async def parsed_stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                async for response in inner(_refusing_malformed(requests, context), context):
                    yield response

            return parsed_stream

        async def parsed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, MalformedRequest):
                await abort(context, refuse_malformed(request))
            async for response in inner(request, context):
                yield response

        return parsed


async def _refusing_malformed(
    requests: AsyncIterable[Any], context: grpc.aio.ServicerContext
) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, MalformedRequest):
            await abort(context, refuse_malformed(request))
        yield request


class ErrorMapping(Link):
    """Exceptions in, specific gRPC statuses out (errors.py, error_table.py)."""

    def wrap(self, call: Call, inner: Behavior) -> Behavior:
        async def mapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for response in inner(request, context):
                    yield response
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status, never lost
                await abort(context, to_service_error(exc, _request_id(request)))

        return mapped


def _request_id(request: Any) -> str:
    value = getattr(request, "request_id", "")
    return value if isinstance(value, str) else ""


class Chain(grpc.aio.ServerInterceptor):
    """Runs every call through ``links`` (outermost first); see the module docstring."""

    def __init__(self, links: Sequence[Link]) -> None:
        self.links = tuple(links)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        found = handler is not None
        if handler is None:
            # Unknown method: a stand-in, so that (say) a caller without the key learns
            # UNAUTHENTICATED, not which methods exist.
            handler = grpc.unary_unary_rpc_method_handler(_unimplemented)
        call = Call(
            method=handler_call_details.method or "",
            metadata=tuple(handler_call_details.invocation_metadata or ()),
            request_streaming=handler.request_streaming,
            response_streaming=handler.response_streaming,
            found=found,
        )
        behavior = as_stream(handler)
        deserialize = handler.request_deserializer
        for link in reversed(self.links):  # the innermost wraps first
            behavior = link.wrap(call, behavior)
            deserialize = link.deserializer(call, deserialize)
        return rebuild(handler, behavior, deserialize)


async def _unimplemented(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


def _behavior_of(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    if handler.request_streaming:
        return handler.stream_stream if handler.response_streaming else handler.stream_unary
    return handler.unary_stream if handler.response_streaming else handler.unary_unary


def as_stream(handler: grpc.RpcMethodHandler) -> Behavior:
    """The handler's behaviour as an async iterator of its responses, whatever its shape."""
    function = _behavior_of(handler)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        result = function(request, context)
        if hasattr(result, "__aiter__"):  # an async generator
            async for response in result:
                yield response
            return
        if inspect.isawaitable(result):  # returns its answer, or writes it (Watch)
            result = await result
        if not handler.response_streaming:
            yield result
        elif result is not None:  # a plain iterator of responses
            for response in result:
                yield response

    return stream


def rebuild(
    handler: grpc.RpcMethodHandler, behavior: Behavior, deserialize: Deserializer
) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s shape that runs ``behavior``."""
    serialize = handler.response_serializer
    if handler.response_streaming:
        original = _behavior_of(handler)
        if inspect.isasyncgenfunction(original) or not inspect.iscoroutinefunction(original):
            streaming: Callable[..., Any] = behavior
        else:  # keep the context.write shape: grpc.aio does not mix it with yield

            async def streaming(request: Any, context: grpc.aio.ServicerContext) -> None:
                async for response in behavior(request, context):
                    await context.write(response)

        make = (
            grpc.stream_stream_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_stream_rpc_method_handler
        )
        return make(streaming, request_deserializer=deserialize, response_serializer=serialize)

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        # Run the behaviour to its end (not just to its one response), so that every
        # link sees the call finish before the answer goes out.
        answer = None
        async for response in behavior(request, context):
            answer = response
        return answer

    make = (
        grpc.stream_unary_rpc_method_handler
        if handler.request_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return make(unary, request_deserializer=deserialize, response_serializer=serialize)
