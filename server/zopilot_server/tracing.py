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
from collections.abc import AsyncIterator
from contextlib import nullcontext
from typing import Any

import grpc

from .rpc_chain import Behavior, Call, Link

log = logging.getLogger(__name__)

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_TRACED = (
    "/zopilot.v1.Generation/GenerateStream",
    "/zopilot.v1.Generation/Generate",
    "/zopilot.v1.Documents/DocumentParse",
    "/inference.GRPCInferenceService/ModelInfer",
    "/fmaas.GenerationService/Generate",
    "/fmaas.GenerationService/GenerateStream",
    "/vllm.grpc.engine.VllmEngine/Generate",
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


class Tracing(Link):
    """Logs ``traceparent`` with the request id; with a tracer, wraps calls in spans."""

    def __init__(self, tracer: Any | None = None) -> None:
        self._tracer = tracer

    def wrap(self, call: Call, inner: Behavior) -> Behavior:
        if not call.found or call.method not in _TRACED:
            return inner
        traceparent = parse_traceparent(call.value("traceparent"))
        tracer = self._tracer
        if traceparent is None and tracer is None:
            return inner
        method = call.method

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

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            span = _span(tracer, method, traceparent) if tracer is not None else nullcontext()
            first = True
            with span:
                try:
                    async for response in inner(request, context):
                        if first:
                            note(response)
                            first = False
                        yield response
                finally:
                    if first:  # no response: the request still names the caller's id
                        note(request)

        return traced


def _safe_id(value: object) -> str:
    """A request id fit for a log line: printable, at most 128 characters, or '-'."""
    text = value if isinstance(value, str) else ""
    return text[:128] if text and text[:128].isprintable() else "-"
