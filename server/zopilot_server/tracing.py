"""W3C trace context: log the caller's ``traceparent`` with the request id; optional spans.

A caller that sends ``traceparent`` metadata (https://www.w3.org/TR/trace-context/) gets
one log line tying its trace id to our request id, so a trace in the caller's system
leads to our logs. Only a well-formed header is logged, never raw client text.

With ``--otlp-endpoint`` the server also exports a span per generate / parse call with
OpenTelemetry (OTLP over gRPC), parented on the caller's trace. The SDK and exporter are
optional packages, imported only when the flag is set; without it nothing is imported.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

log = logging.getLogger(__name__)

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_TRACED = (
    "/zopilot.v1.Generation/GenerateStream",
    "/zopilot.v1.Generation/Generate",
    "/zopilot.v1.Documents/DocumentParse",
)


def parse_traceparent(value: object) -> str | None:
    """The header if it is a valid W3C traceparent (all-zero ids are invalid), else None."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return None
    return value.strip()


def make_tracer(endpoint: str, service_name: str = "zopilot-server") -> Any:
    """An OpenTelemetry tracer exporting to ``endpoint``; RuntimeError if not installed."""
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            "--otlp-endpoint needs OpenTelemetry: pip install opentelemetry-sdk "
            "opentelemetry-exporter-otlp-proto-grpc"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider.get_tracer("zopilot_server")


def _span(tracer: Any, method: str, traceparent: str | None) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": traceparent} if traceparent else {}
    parent = TraceContextTextMapPropagator().extract(carrier)
    return tracer.start_as_current_span(method.rsplit("/", 1)[-1], context=parent)


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """Logs ``traceparent`` with the request id; with a tracer, wraps calls in spans."""

    def __init__(self, tracer: Any | None = None) -> None:
        self._tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method not in _TRACED:
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        traceparent = parse_traceparent(metadata.get("traceparent"))
        if traceparent is None and self._tracer is None:
            return handler
        tracer = self._tracer

        def note(message: Any) -> None:
            """One line tying the trace to our request id (the response carries the id
            the server assigned when the caller sent none)."""
            if traceparent is not None:
                log.info(
                    "request %s: %s traceparent %s",
                    _safe_id(getattr(message, "request_id", "")),
                    method.rsplit("/", 1)[-1],
                    traceparent,
                )

        async def run_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            first = True
            try:
                async for response in handler.unary_stream(request, context):
                    if first:
                        note(response)
                        first = False
                    yield response
            finally:
                if first:
                    note(request)

        async def run_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                response = await handler.unary_unary(request, context)
            except BaseException:
                note(request)
                raise
            note(response)
            return response

        if handler.response_streaming:

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if tracer is None:
                    async for response in run_stream(request, context):
                        yield response
                    return
                with _span(tracer, method, traceparent):
                    async for response in run_stream(request, context):
                        yield response

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if tracer is None:
                return await run_unary(request, context)
            with _span(tracer, method, traceparent):
                return await run_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _safe_id(value: object) -> str:
    """A request id fit for a log line: printable, at most 128 characters, or '-'."""
    text = value if isinstance(value, str) else ""
    return text[:128] if text and text[:128].isprintable() else "-"
