"""VllmEngine generations count in the same Prometheus counters as zopilot.v1's: prompt
and generated tokens (what GenerateComplete reports) and finished generations by reason,
in zopilot.v1's label values. Scraped from the real /metrics endpoint, before and after."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from metrics_scrape import scrape, value
from smg_grpc_proto.generated import vllm_engine_pb2 as vpb
from smg_grpc_proto.generated import vllm_engine_pb2_grpc as vpb_grpc
from support import free_port
from vllm_calls import complete_of, generate, greedy

PROMPT = [1, 504, 2365, 6354, 16438]  # token ids inside SmolLM2's vocabulary


def counters(port: int) -> dict[str, float]:
    samples = scrape(port)
    return {
        "prompt": value(samples, "zopilot_prompt_tokens_total"),
        "generated": value(samples, "zopilot_generation_tokens_total"),
        "length": value(samples, "zopilot_request_success_total", finished_reason="length"),
        "eos_token": value(samples, "zopilot_request_success_total", finished_reason="eos_token"),
        "failures": value(samples, "zopilot_request_failure_total"),
    }


@pytest.fixture
def served(make_server: Any) -> Iterator[tuple[Any, int]]:
    port = free_port()
    server = make_server(metrics_port=port, doc_prestart=False)
    channel = server.channel()
    yield vpb_grpc.VllmEngineStub(channel), port
    channel.close()


def test_tokens_and_finish_reasons_count(served: tuple[Any, int]) -> None:
    stub, port = served
    before = counters(port)
    streamed = complete_of(generate(stub, PROMPT, greedy(max_tokens=5, ignore_eos=True)))
    unary = complete_of(generate(stub, PROMPT, greedy(max_tokens=3, ignore_eos=True), stream=False))
    # A stop token id (the greedy run's third token) ends the next run early: "stop".
    stop_id = streamed.output_ids[2]
    stopped = complete_of(generate(stub, PROMPT, greedy(max_tokens=5, stop_token_ids=[stop_id])))
    assert (streamed.finish_reason, unary.finish_reason) == ("length", "length")
    assert stopped.finish_reason == "stop" and stopped.matched_token_id == stop_id
    after = counters(port)
    done = (streamed, unary, stopped)
    assert after["prompt"] - before["prompt"] == sum(c.prompt_tokens for c in done)
    assert after["generated"] - before["generated"] == sum(c.completion_tokens for c in done)
    assert sum(c.completion_tokens for c in done) == 5 + 3 + len(stopped.output_ids)
    assert after["length"] - before["length"] == 2
    assert after["eos_token"] - before["eos_token"] == 1  # vLLM's "stop" without a string


def test_a_refused_call_counts_a_failure_and_no_tokens(served: tuple[Any, int]) -> None:
    stub, port = served
    before = counters(port)
    with pytest.raises(grpc.RpcError) as caught:
        generate(stub, PROMPT, vpb.SamplingParams(temperature=0.0, min_p=0.5))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = counters(port)
    assert (after["prompt"], after["generated"]) == (before["prompt"], before["generated"])
    assert after["failures"] - before["failures"] == 1
