"""Prometheus metrics: scrape the real /metrics endpoint after real calls and see it move.

The counters are process-wide (one model per server process), so every assertion is on
the difference between a scrape before and a scrape after the calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import documents_builders as build
import grpc
import pytest
from metrics_scrape import scrape, value
from support import InProcessServer, free_port, wait_until
from zopilot_client.pb import documents_pb2, documents_pb2_grpc, generation_pb2, generation_pb2_grpc
from zopilot_server import metrics
from zopilot_server.config import ServerConfig
from zopilot_server.generation.domain import EngineLoad


@pytest.fixture
def metrics_server(make_server: Callable[..., InProcessServer]) -> tuple[InProcessServer, int]:
    port = free_port()
    server = make_server(metrics_port=port, doc_workers=1)
    return server, port


def test_counters_and_histograms_move_after_requests(
    metrics_server: tuple[InProcessServer, int],
) -> None:
    server, port = metrics_server
    model = server.running.engine.loaded.model_id  # type: ignore[union-attr]
    before = scrape(port)
    with server.channel() as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        request = generation_pb2.GenerateRequest(prompt="Hello there", max_new_tokens=5)
        request.ignore_eos = True
        chunks = list(stub.GenerateStream(request, timeout=60))
        unary = stub.Generate(request, timeout=60)
        with pytest.raises(grpc.RpcError) as bad:
            stub.Generate(generation_pb2.GenerateRequest(prompt=""), timeout=30)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        docs = documents_pb2_grpc.DocumentsStub(channel)
        parsed = docs.DocumentParse(
            documents_pb2.DocumentParseRequest(content=build.csv_rows(3), filename="t.csv"),
            timeout=60,
        )
        with pytest.raises(grpc.RpcError) as rejected:
            docs.DocumentParse(documents_pb2.DocumentParseRequest(content=b""), timeout=30)
    # A failed call's status reaches the client as the server aborts it, a moment before
    # the edge records it: wait for the last failure to show (a bound for a hang only).
    outcome = rejected.value.code().name
    assert wait_until(
        lambda: (
            value(scrape(port), "zopilot_document_parses_total", outcome=outcome)
            > value(before, "zopilot_document_parses_total", outcome=outcome)
        ),
        timeout=10,
    )
    after = scrape(port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    generated = chunks[-1].usage.generated_tokens + unary.usage.generated_tokens
    prompt = chunks[-1].usage.input_tokens + unary.usage.input_tokens
    assert generated == 10
    assert delta("zopilot_request_success_total", model_name=model, finished_reason="length") == 2
    assert delta("zopilot_generation_tokens_total", model_name=model) == generated
    assert delta("zopilot_prompt_tokens_total", model_name=model) == prompt
    assert delta("zopilot_request_failure_total", method="Generate", code="INVALID_ARGUMENT") == 1
    for histogram in (
        "zopilot_request_queue_time_seconds",
        "zopilot_time_to_first_token_seconds",
        "zopilot_inter_token_latency_seconds",
        "zopilot_e2e_request_latency_seconds",
    ):
        assert delta(f"{histogram}_count", model_name=model) == 2, histogram
        assert delta(f"{histogram}_sum", model_name=model) > 0, histogram
    doc_type = parsed.metadata.detected_type
    assert doc_type == "csv"
    assert delta("zopilot_document_parses_total", type="csv", outcome="OK") == 1
    assert delta("zopilot_document_parses_total", type="unknown", outcome=outcome) == 1
    assert delta("zopilot_document_parse_latency_seconds_count", type="csv") == 1
    # Idle now: the load gauges are read at scrape time and say so.
    for gauge in (
        "zopilot_num_requests_waiting",
        "zopilot_num_requests_running",
        "zopilot_document_workers_busy",
        "zopilot_document_queue_depth",
    ):
        assert (gauge, (("model_name", model),)) in after, gauge
        assert value(after, gauge) == 0, gauge


def test_gauges_read_engine_load_at_scrape_time(
    metrics_server: tuple[InProcessServer, int],
) -> None:
    server, port = metrics_server

    class Busy:
        def engine_load(self) -> EngineLoad:
            return EngineLoad(waiting=3, running=2, kv_tokens_used=256, kv_tokens_budget=1024)

        def parser_load(self) -> tuple[int, int]:
            return (1, 4)

    metrics.bind(Busy())  # type: ignore[arg-type]
    try:
        samples = scrape(port)
    finally:
        metrics.bind(server.running)
    assert value(samples, "zopilot_num_requests_waiting") == 3
    assert value(samples, "zopilot_num_requests_running") == 2
    assert value(samples, "zopilot_kv_cache_usage_perc") == 0.25
    assert value(samples, "zopilot_document_workers_busy") == 1
    assert value(samples, "zopilot_document_queue_depth") == 4
    # The real engine's load while idle.
    load = server.running.engine.load()  # type: ignore[union-attr]
    assert (load.waiting, load.running) == (0, 0)


def test_batch_size_histogram(metrics_server: tuple[InProcessServer, int]) -> None:
    _, port = metrics_server
    before = value(scrape(port), "zopilot_batch_size_sum")
    metrics.observe_batch_size(4)
    metrics.observe_batch_size(2)
    samples = scrape(port)
    assert value(samples, "zopilot_batch_size_sum") - before == 6
    assert value(samples, "zopilot_batch_size_bucket", le="4.0") >= 2


def test_metrics_port_closes_with_the_server(tiny_config: ServerConfig) -> None:
    port = free_port()
    server = InProcessServer(dataclasses.replace(tiny_config, metrics_port=port))
    assert value(scrape(port), "zopilot_num_requests_running") == 0
    server.stop()
    with pytest.raises(OSError):
        scrape(port)
