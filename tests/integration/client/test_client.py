"""The blocking Client against the real server: every method, streams and cancellation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import zopilot_client as zc
from support import InProcessServer, engine_idle, finish_spy
from zopilot_server.generation.domain import FinishReason as ServerFinish

LONG = {"max_new_tokens": 1500, "ignore_eos": True}  # long enough to be cut short


@pytest.fixture
def client(tiny_server: InProcessServer) -> Iterator[zc.Client]:
    with zc.Client(tiny_server.target, timeout=60) as client:
        yield client


def new_id() -> str:
    return uuid.uuid4().hex


def test_generate_returns_a_typed_result_with_the_raw_message(client):
    result = client.generate("Hello there", max_new_tokens=6, ignore_eos=True, request_id="r-1")
    assert isinstance(result, zc.GenerateResult)
    assert result.finish_reason is zc.FinishReason.LENGTH
    assert result.usage.generated_tokens == 6
    assert result.request_id == "r-1"
    assert result.raw is not None and result.raw.text == result.text
    assert result.to_dict()["finish_reason"] == "length"


def test_stream_chunks_add_up_to_generate_and_expose_the_result(client):
    params = {"max_new_tokens": 10, "ignore_eos": True, "return_token_details": True}
    with client.generate_stream("Hello there", **params) as stream:
        chunks = list(stream)
    assert all(not c.is_last for c in chunks[:-1]) and chunks[-1].is_last
    assert chunks[-1].usage is not None and chunks[-1].usage.generated_tokens == 10
    whole = client.generate("Hello there", **params)
    assert stream.text == whole.text == "".join(c.text for c in chunks)
    assert stream.result is not None
    assert stream.result.text == whole.text
    assert [t.id for t in stream.result.tokens] == [t.id for t in whole.tokens]
    assert len(whole.tokens) == 10


def test_chat_messages_accept_dataclasses_mappings_and_pairs(client):
    messages = [
        zc.ChatMessage("system", "Be brief."),
        {"role": "user", "content": "Hi"},
        ("assistant", "Hello!"),
        ("user", "Bye"),
    ]
    result = client.generate(messages, max_new_tokens=3)
    prompt_only = client.generate(messages[:2], max_new_tokens=3)
    assert result.usage.input_tokens > prompt_only.usage.input_tokens


def test_stop_sequences_top_n_and_seed_pass_through(client):
    result = client.generate(
        "Hello", max_new_tokens=5, temperature=0.7, top_k=5, seed=7, top_n_tokens=2
    )
    again = client.generate(
        "Hello", max_new_tokens=5, temperature=0.7, top_k=5, seed=7, top_n_tokens=2
    )
    assert result.seed == 7 and result.text == again.text
    assert all(len(t.top_tokens) == 2 for t in result.tokens)
    stopped = client.generate("Hello", max_new_tokens=20, ignore_eos=True, stop_sequences="Found")
    assert stopped.finish_reason is zc.FinishReason.STOP_SEQUENCE
    assert stopped.stop_sequence == "Found" and stopped.text == ""


def test_unknown_keyword_is_a_type_error_before_any_network_call(client):
    with pytest.raises(TypeError, match="max_tokens"):
        client.generate("Hello", max_tokens=3)


def test_tokenize(client):
    result = client.tokenize("Hello world")
    assert result.tokens == ("Hello", "Ġworld")
    assert result.offsets == ((0, 5), (5, 11))
    assert len(result) == 2 and not result.truncated
    truncated = client.tokenize("Hello big world", truncate_input_tokens=1)
    assert truncated.truncated and truncated.ids == result.ids[-1:]


def test_model_info(client):
    info = client.model_info()
    assert info.architecture == "LlamaForCausalLM"
    assert info.has_chat_template and info.eos_token == "<|im_end|>"
    assert info.quantization.mode == "none"
    assert info.raw is not None and info.raw.vocab_size == info.vocab_size


def test_health_of_the_server_and_of_a_service(client):
    assert client.health() is zc.HealthStatus.SERVING
    assert client.health("zopilot.v1.Generation") is zc.HealthStatus.SERVING


@pytest.mark.parametrize("how", ["break", "close", "exception"])
def test_leaving_a_stream_early_cancels_generation_on_the_server(client, tiny_server, how):
    request_id = new_id()

    def start() -> zc.GenerateStream:
        return client.generate_stream("Hello", request_id=request_id, **LONG)

    with finish_spy(tiny_server) as spy:
        if how == "break":  # the plain idiom: no `with`, no variable
            for _ in start():
                break
        elif how == "close":
            stream = start()
            next(stream)
            stream.close()
            assert list(stream) == []  # a closed stream just ends
        else:
            with pytest.raises(RuntimeError), start() as stream:
                next(stream)
                raise RuntimeError("the caller failed mid-stream")
        assert spy.reason(request_id) is ServerFinish.CANCELLED
    assert engine_idle(tiny_server)


def test_a_stream_with_a_timeout_ends_with_time_limit_and_keeps_its_text(client):
    with client.generate_stream("Hello", max_new_tokens=2000, ignore_eos=True, timeout=1) as s:
        chunks = list(s)
    assert chunks[-1].finish_reason is zc.FinishReason.TIME_LIMIT
    assert s.result is not None and s.result.usage.generated_tokens > 0 and s.text


def test_parse_document_from_a_path_bytes_or_a_file(client, tmp_path):
    note = tmp_path / "note.txt"
    note.write_text("Hello from zopilot\n")
    from_path = client.parse_document(note, formats=["markdown", "text"], request_id="doc-1")
    assert "Hello from zopilot" in (from_path.markdown or "")
    assert "Hello from zopilot" in (from_path.text or "")
    assert from_path.html is None and from_path.request_id == "doc-1"
    assert from_path.metadata.detected_type == "txt"
    from_bytes = client.parse_document(note.read_bytes(), filename="note.txt")
    with note.open("rb") as handle:
        from_file = client.parse_document(handle)
    assert from_bytes.markdown == from_file.markdown == from_path.markdown


def test_parse_document_rejects_an_unknown_format_locally(client):
    with pytest.raises(ValueError, match="unknown output format"):
        client.parse_document(b"x", filename="a.txt", formats=["docx"])


def test_round_robin_spreads_calls_over_two_servers(make_server):
    first = make_server(default_max_new_tokens=3)
    second = make_server(default_max_new_tokens=4)
    target = f"ipv4:{first.target},{second.target}"
    seen: set[int] = set()
    with zc.Client(target, timeout=30, wait_for_ready=True) as client:
        for _ in range(200):
            seen.add(client.model_info().default_max_new_tokens)
            if seen == {3, 4}:
                break
    assert seen == {3, 4}


def test_dns_target(tiny_server):
    port = tiny_server.target.rsplit(":", 1)[1]
    with zc.Client(f"dns:///127.0.0.1:{port}", timeout=30) as client:
        assert client.health() is zc.HealthStatus.SERVING


def test_real_model_answers_a_chat_question(smollm2_server):
    with zc.Client(smollm2_server.target, timeout=120) as client:
        result = client.generate(
            [{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=12
        )
    assert "Paris" in result.text
