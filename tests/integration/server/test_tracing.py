"""W3C trace context: a caller's traceparent is logged with the request id; OTLP is optional."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest
from support import InProcessServer
from zopilot_client.pb import generation_pb2, generation_pb2_grpc
from zopilot_server.app import start_server
from zopilot_server.config import ServerConfig
from zopilot_server.tracing import parse_traceparent

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_parse_traceparent_accepts_only_w3c_headers() -> None:
    assert parse_traceparent(TRACEPARENT) == TRACEPARENT
    for bad in (
        None,
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        TRACEPARENT + "\nforged log line",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
    ):
        assert parse_traceparent(bad) is None, bad


def test_traceparent_is_logged_with_the_request_id(
    tiny_server: InProcessServer, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger="zopilot_server.tracing"),
        tiny_server.channel() as channel,
    ):
        stub = generation_pb2_grpc.GenerationStub(channel)
        request = generation_pb2.GenerateRequest(prompt="Hi", max_new_tokens=2)
        request.request_id = "trace-me-1"
        list(stub.GenerateStream(request, metadata=[("traceparent", TRACEPARENT)]))
        reply = stub.Generate(
            generation_pb2.GenerateRequest(prompt="Hi", max_new_tokens=2),
            metadata=[("traceparent", TRACEPARENT)],
        )
        list(stub.GenerateStream(request, metadata=[("traceparent", "garbage-line")]))
    lines = [r.getMessage() for r in caplog.records if r.name == "zopilot_server.tracing"]
    assert f"request trace-me-1: GenerateStream traceparent {TRACEPARENT}" in lines
    # No id sent: the line carries the one the server assigned (the response's).
    assert (
        reply.request_id
        and f"request {reply.request_id}: Generate traceparent " + (TRACEPARENT) in lines
    )
    assert len(lines) == 2  # the malformed header is not logged


def test_otlp_endpoint_without_opentelemetry_fails_clearly(tiny_config: ServerConfig) -> None:
    if "opentelemetry.sdk" in sys.modules or _installed("opentelemetry.sdk"):
        pytest.skip("opentelemetry-sdk is installed here")
    config = ServerConfig(model=tiny_config.model, port=0, otlp_endpoint="http://127.0.0.1:4317")
    with pytest.raises(RuntimeError, match="pip install opentelemetry-sdk"):
        asyncio.run(start_server(config))
    assert "opentelemetry.sdk" not in sys.modules


def _installed(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
