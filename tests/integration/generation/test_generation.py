"""GenerateStream / Generate behaviour through the real server on loopback."""

from __future__ import annotations

import math

import grpc
import pytest
from zopilot_client.pb import generation_pb2 as pb

PROMPT = "The quick brown fox"


def stream(stub, timeout: float = 60, **fields) -> list[pb.GenerateResponse]:
    return list(stub.GenerateStream(pb.GenerateRequest(**fields), timeout=timeout))


def text_of(chunks: list[pb.GenerateResponse]) -> str:
    return "".join(c.text for c in chunks)


def test_stream_chunks_and_final_metadata(tiny_stub):
    chunks = stream(tiny_stub, prompt=PROMPT, max_new_tokens=16, ignore_eos=True, request_id="r-1")
    *body, last = chunks
    assert all(c.finish_reason == pb.FINISH_REASON_UNSPECIFIED for c in body)
    assert all(c.request_id == "r-1" for c in chunks)
    assert last.finish_reason == pb.FINISH_REASON_LENGTH
    assert last.usage.generated_tokens == 16
    assert last.usage.input_tokens == 4
    assert not last.usage.input_truncated
    t = last.timings
    assert t.time_to_first_token_ms > 0 and t.generation_ms > 0 and t.tokens_per_second > 0
    assert t.total_ms >= t.time_to_first_token_ms >= t.queue_ms >= 0
    # pieces, not all at the end (tokens that pile up while a chunk is sent are merged)
    assert len(body) >= 2


def test_server_makes_a_request_id_when_none_is_sent(tiny_stub):
    chunks = stream(tiny_stub, prompt=PROMPT, max_new_tokens=2)
    assert chunks[-1].request_id and len({c.request_id for c in chunks}) == 1


def test_unary_generate_equals_concatenated_stream(tiny_stub):
    fields = {"prompt": PROMPT, "max_new_tokens": 40, "ignore_eos": True}
    chunks = stream(tiny_stub, **fields)
    unary = tiny_stub.Generate(pb.GenerateRequest(**fields), timeout=60)
    assert text_of(chunks) == unary.text
    assert unary.finish_reason == pb.FINISH_REASON_LENGTH
    assert unary.usage.generated_tokens == 40


def test_same_seed_same_sample_and_seed_is_reported(tiny_stub):
    fields = {"prompt": PROMPT, "max_new_tokens": 24, "ignore_eos": True, "temperature": 1.0}
    a = tiny_stub.Generate(pb.GenerateRequest(seed=1234, **fields), timeout=60)
    b = tiny_stub.Generate(pb.GenerateRequest(seed=1234, **fields), timeout=60)
    c = tiny_stub.Generate(pb.GenerateRequest(seed=99, **fields), timeout=60)
    assert a.text == b.text and a.seed == 1234
    assert a.text != c.text
    unseeded = tiny_stub.Generate(pb.GenerateRequest(**fields), timeout=60)
    replay = tiny_stub.Generate(pb.GenerateRequest(seed=unseeded.seed, **fields), timeout=60)
    assert replay.text == unseeded.text, "the reported seed must reproduce the sample"


def test_sampling_parameters_are_applied(tiny_stub):
    fields = {"prompt": PROMPT, "max_new_tokens": 24, "ignore_eos": True, "seed": 7}
    base = tiny_stub.Generate(pb.GenerateRequest(temperature=1.5, **fields), timeout=60).text
    top_k_1 = tiny_stub.Generate(pb.GenerateRequest(temperature=1.5, top_k=1, **fields), timeout=60)
    greedy = tiny_stub.Generate(pb.GenerateRequest(**fields), timeout=60)
    assert top_k_1.text == greedy.text, "top_k=1 sampling is greedy decoding"
    assert base != greedy.text
    penalised = tiny_stub.Generate(pb.GenerateRequest(repetition_penalty=5.0, **fields), timeout=60)
    assert penalised.text != greedy.text


def _spanning_stop(full: str, offsets) -> tuple[int, int]:
    """A substring that starts inside one token, ends inside a later one, and first occurs
    there (so it is where generation must stop)."""
    for k in range(3, len(offsets) - 3):
        start, end = offsets[k].start + 1, offsets[k + 2].end - 1
        if end - start >= 3 and full.find(full[start:end]) == start:
            return start, end
    raise AssertionError(f"no usable stop sequence in {full!r}")


def test_stop_sequence_across_tokens_with_hold_back(tiny_stub):
    fields = {
        "prompt": PROMPT,
        "max_new_tokens": 40,
        "ignore_eos": True,
        "temperature": 1.0,
        "seed": 3,
    }
    full = tiny_stub.Generate(pb.GenerateRequest(**fields), timeout=60).text
    ids = tiny_stub.Tokenize(pb.TokenizeRequest(text=full), timeout=10)
    start, end = _spanning_stop(full, ids.offsets)
    stop = full[start:end]
    chunks = stream(tiny_stub, stop_sequences=[stop], **fields)
    last = chunks[-1]
    assert last.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert last.stop_sequence == stop
    assert text_of(chunks) == full[:start], "nothing past the match may ever be sent"
    assert last.usage.generated_tokens < 40

    included = tiny_stub.Generate(
        pb.GenerateRequest(
            stop_sequences=["zzzz-never", stop], include_stop_sequence=True, **fields
        ),
        timeout=60,
    )
    assert included.text == full[:end]
    assert included.stop_sequence == stop


def test_token_details_with_top_alternatives(tiny_stub):
    chunks = stream(
        tiny_stub,
        prompt=PROMPT,
        max_new_tokens=10,
        ignore_eos=True,
        return_token_details=True,
        top_n_tokens=3,
    )
    tokens = [t for c in chunks for t in c.tokens]
    assert len(tokens) == chunks[-1].usage.generated_tokens == 10
    for token in tokens:
        assert token.logprob <= 0 and not math.isnan(token.logprob)
        assert len(token.top_tokens) == 3
        # greedy: the chosen token is the most likely one
        assert token.top_tokens[0].id == token.id
        assert token.top_tokens[0].logprob == pytest.approx(token.logprob, abs=1e-5)
        assert token.top_tokens[0].logprob >= token.top_tokens[1].logprob
    plain = stream(tiny_stub, prompt=PROMPT, max_new_tokens=10, ignore_eos=True)
    assert all(not c.tokens for c in plain), "token details are opt-in"
    assert text_of(plain) == text_of(chunks)


def test_truncate_input_tokens_keeps_the_last_tokens(tiny_stub):
    prompt = "one two three four five six seven eight nine ten"
    chunks = stream(tiny_stub, prompt=prompt, max_new_tokens=2, truncate_input_tokens=3)
    assert chunks[-1].usage.input_tokens == 3
    assert chunks[-1].usage.input_truncated
    kept = tiny_stub.Generate(pb.GenerateRequest(prompt=" eight nine ten", max_new_tokens=2))
    assert text_of(chunks) == kept.text


def test_time_limit_returns_what_was_generated(tiny_stub):
    chunks = stream(
        tiny_stub, prompt=PROMPT, max_new_tokens=2000, ignore_eos=True, time_limit_ms=300
    )
    last = chunks[-1]
    assert last.finish_reason == pb.FINISH_REASON_TIME_LIMIT
    assert 0 < last.usage.generated_tokens < 2000
    assert text_of(chunks)


def test_grpc_deadline_ends_with_time_limit_not_deadline_exceeded(tiny_stub):
    call = tiny_stub.GenerateStream(
        pb.GenerateRequest(prompt=PROMPT, max_new_tokens=2000, ignore_eos=True), timeout=1.0
    )
    chunks = list(call)  # would raise DEADLINE_EXCEEDED if the server ignored the deadline
    assert call.code() == grpc.StatusCode.OK
    assert chunks[-1].finish_reason == pb.FINISH_REASON_TIME_LIMIT
    assert chunks[-1].usage.generated_tokens > 0
    unary = tiny_stub.Generate(
        pb.GenerateRequest(prompt=PROMPT, max_new_tokens=2000, ignore_eos=True), timeout=1.0
    )
    assert unary.finish_reason == pb.FINISH_REASON_TIME_LIMIT and unary.text


def test_min_new_tokens_and_eos_on_the_real_model(smollm2_stub):
    question = [pb.ChatMessage(role="user", content="What is the capital of France?")]
    answer = smollm2_stub.Generate(pb.GenerateRequest(messages=question, max_new_tokens=40))
    assert answer.finish_reason == pb.FINISH_REASON_EOS_TOKEN
    assert "Paris" in answer.text
    longer = smollm2_stub.Generate(
        pb.GenerateRequest(messages=question, max_new_tokens=40, min_new_tokens=20)
    )
    assert longer.usage.generated_tokens >= 20 > answer.usage.generated_tokens


def test_greedy_smollm2_answers_paris_as_a_stream(smollm2_stub):
    question = [pb.ChatMessage(role="user", content="What is the capital of France?")]
    chunks = stream(smollm2_stub, messages=question, max_new_tokens=30)
    assert "Paris" in text_of(chunks)
    assert chunks[-1].finish_reason == pb.FINISH_REASON_EOS_TOKEN


def test_stream_interval_merges_tokens_into_fewer_chunks(make_server):
    from zopilot_client.pb import generation_pb2_grpc

    fields = {"prompt": PROMPT, "max_new_tokens": 64, "ignore_eos": True}
    server = make_server(stream_interval_ms=50)
    with server.channel() as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        merged = stream(stub, return_token_details=True, **fields)
        unary = stub.Generate(pb.GenerateRequest(**fields), timeout=60)
    assert text_of(merged) == unary.text
    assert sum(len(c.tokens) for c in merged) == 64  # every token is still reported
    assert len(merged) < 64 / 2, "tokens generated within an interval share a chunk"


def test_each_finished_request_is_logged_once(tiny_stub, caplog):
    caplog.set_level("INFO", logger="zopilot_server")
    stream(tiny_stub, prompt=PROMPT, max_new_tokens=3, ignore_eos=True, request_id="log-me")
    lines = [r.getMessage() for r in caplog.records if "request log-me:" in r.getMessage()]
    assert len(lines) == 1 and "LENGTH, 4 prompt + 3 generated tokens" in lines[0]
