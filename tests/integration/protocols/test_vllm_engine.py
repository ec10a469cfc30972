"""vllm.grpc.engine.VllmEngine driven by the stubs published in the smg-grpc-proto wheel
(``smg_grpc_proto.generated``, the default descriptor pool: what a gateway's Python
client uses), not the server's own. The tiny model checks mechanics against zopilot.v1
Generate for the same token ids; SmolLM2 checks the one real answer."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from smg_grpc_proto.generated import common_pb2 as cpb
from smg_grpc_proto.generated import vllm_engine_pb2 as vpb
from smg_grpc_proto.generated import vllm_engine_pb2_grpc as vpb_grpc
from support import REPO, InProcessServer, engine_idle, field_violations, free_port
from vllm_calls import complete_of, generate, greedy
from zopilot_client.pb import generation_pb2, generation_pb2_grpc


@pytest.fixture(scope="module")
def stub(tiny_server: InProcessServer) -> Iterator[Any]:
    with tiny_server.channel() as channel:
        yield vpb_grpc.VllmEngineStub(channel)


def ids_of(server: InProcessServer, text: str) -> list[int]:
    stub = generation_pb2_grpc.GenerationStub(server.channel())
    return list(stub.Tokenize(generation_pb2.TokenizeRequest(text=text)).ids)


def test_the_vendored_protos_are_the_published_ones() -> None:
    import smg_grpc_proto

    published = Path(smg_grpc_proto.__file__).parent / "proto"
    for name in ("vllm_engine.proto", "common.proto"):
        ours = (REPO / "protos" / "vllm" / name).read_bytes()
        assert ours == (published / name).read_bytes(), name
        assert hashlib.sha256(ours).hexdigest() in (REPO / "protos/vllm/README.md").read_text()


def test_greedy_ids_equal_our_generate_and_chunks_add_up(
    stub: Any, tiny_server: InProcessServer
) -> None:
    ids = ids_of(tiny_server, "The quick brown fox")
    ours = generation_pb2_grpc.GenerationStub(tiny_server.channel()).Generate(
        generation_pb2.GenerateRequest(
            prompt="The quick brown fox",
            max_new_tokens=12,
            ignore_eos=True,
            return_token_details=True,
        )
    )
    responses = generate(stub, ids, greedy(max_tokens=12, ignore_eos=True))
    done = complete_of(responses)
    streamed = [t for r in responses[:-1] for t in r.chunk.token_ids]
    assert streamed == list(done.output_ids) == [t.id for t in ours.tokens]
    assert done.finish_reason == "length"
    assert (done.prompt_tokens, done.completion_tokens) == (len(ids), 12)
    assert [r.chunk.completion_tokens for r in responses[:-1]][-1] == 12
    # Not streaming: the GenerateComplete alone, same ids.
    whole = generate(stub, ids, greedy(max_tokens=12, ignore_eos=True), stream=False)
    assert len(whole) == 1 and list(complete_of(whole).output_ids) == streamed


def test_text_input_equals_token_input(stub: Any, tiny_server: InProcessServer) -> None:
    request = vpb.GenerateRequest(text="Hello there", sampling_params=greedy(max_tokens=6))
    by_text = complete_of(list(stub.Generate(request, timeout=60)))
    by_ids = complete_of(generate(stub, ids_of(tiny_server, "Hello there"), greedy(max_tokens=6)))
    assert list(by_text.output_ids) == list(by_ids.output_ids)


def test_stop_token_id_ends_and_is_reported(stub: Any, tiny_server: InProcessServer) -> None:
    ids = ids_of(tiny_server, "One two three")
    free = list(complete_of(generate(stub, ids, greedy(max_tokens=8, ignore_eos=True))).output_ids)
    stop = free[3]
    first = free.index(stop)
    done = complete_of(
        generate(stub, ids, greedy(max_tokens=8, ignore_eos=True, stop_token_ids=[stop]))
    )
    assert list(done.output_ids) == free[:first]
    assert done.finish_reason == "stop"
    assert done.WhichOneof("matched_stop") == "matched_token_id"
    assert done.matched_token_id == stop
    # min_tokens holds the stop token back, as vLLM does.
    held = complete_of(
        generate(
            stub, ids, greedy(max_tokens=8, min_tokens=8, ignore_eos=True, stop_token_ids=[stop])
        )
    )
    assert held.completion_tokens == 8 and stop not in list(held.output_ids)


def test_stop_string_is_matched(stub: Any, tiny_server: InProcessServer) -> None:
    ids = ids_of(tiny_server, "One two three")
    ours = generation_pb2_grpc.GenerationStub(tiny_server.channel()).Generate(
        generation_pb2.GenerateRequest(prompt="One two three", max_new_tokens=10, ignore_eos=True)
    )
    stop = ours.text[3:6]
    assert stop.strip(), ours.text
    done = complete_of(generate(stub, ids, greedy(max_tokens=10, ignore_eos=True, stop=[stop])))
    assert done.finish_reason == "stop"
    assert done.matched_stop_str == stop


def test_seeded_sampling_repeats_and_logprobs(stub: Any, tiny_server: InProcessServer) -> None:
    ids = ids_of(tiny_server, "Once upon a time")
    params = vpb.SamplingParams(temperature=1.0, seed=7, max_tokens=6, ignore_eos=True, logprobs=2)
    a, b = (complete_of(generate(stub, ids, params)) for _ in range(2))
    assert list(a.output_ids) == list(b.output_ids)
    lp = a.output_logprobs
    assert list(lp.token_ids) == list(a.output_ids)
    assert len(lp.token_logprobs) == 6 and all(v <= 0.0 for v in lp.token_logprobs)
    assert [len(t.token_ids) for t in lp.top_logprobs] == [2] * 6
    # Unset logprobs: none sent.
    plain = complete_of(generate(stub, ids, greedy(max_tokens=3)))
    assert not plain.HasField("output_logprobs")


def test_json_schema_constraint(stub: Any, tiny_server: InProcessServer) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    responses = generate(
        stub,
        ids_of(tiny_server, "Answer in JSON:"),
        greedy(max_tokens=40, json_schema=json.dumps(schema)),
    )
    done = complete_of(responses)
    assert done.finish_reason == "stop"
    archive = _tokenizer_zip(vpb_grpc.VllmEngineStub(tiny_server.channel()))
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_tokenizer_from(archive))
    value = json.loads(tokenizer.decode(list(done.output_ids)))
    assert isinstance(value["ok"], bool) and set(value) == {"ok"}


def _tokenizer_zip(stub: Any) -> zipfile.ZipFile:
    chunks = list(stub.GetTokenizer(cpb.GetTokenizerRequest(), timeout=60))
    data = b"".join(c.data for c in chunks)
    assert [c.sha256 for c in chunks[:-1]] == [""] * (len(chunks) - 1)
    assert chunks[-1].sha256 == hashlib.sha256(data).hexdigest()
    return zipfile.ZipFile(io.BytesIO(data))


def _tokenizer_from(archive: zipfile.ZipFile) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(archive.read("tokenizer.json").decode("utf-8"))


def test_get_tokenizer_serves_the_files(stub: Any, tiny_server: InProcessServer) -> None:
    archive = _tokenizer_zip(stub)
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(archive.namelist())
    tokenizer = _tokenizer_from(archive)
    text = "Paris is the capital"
    assert tokenizer.encode(text, add_special_tokens=False).ids == ids_of(tiny_server, text)


def test_abort_ends_a_running_stream(stub: Any, tiny_server: InProcessServer) -> None:
    request = vpb.GenerateRequest(
        request_id="to-abort",
        tokenized=vpb.TokenizedInput(input_ids=ids_of(tiny_server, "Tell a story")),
        sampling_params=greedy(max_tokens=1500, ignore_eos=True),
        stream=True,
    )
    call = stub.Generate(request, timeout=120)
    next(call)
    stub.Abort(vpb.AbortRequest(request_ids=["to-abort", "unknown-id"]), timeout=10)
    rest = list(call)
    done = complete_of(rest)
    assert done.finish_reason == "abort"
    assert done.completion_tokens < 1500
    assert engine_idle(tiny_server)


def test_cancelled_stream_leaves_the_batch(stub: Any, tiny_server: InProcessServer) -> None:
    call = stub.Generate(
        vpb.GenerateRequest(
            tokenized=vpb.TokenizedInput(input_ids=ids_of(tiny_server, "Tell a story")),
            sampling_params=greedy(max_tokens=1500, ignore_eos=True),
            stream=True,
        ),
        timeout=120,
    )
    next(call)
    call.cancel()
    assert engine_idle(tiny_server)


def test_deadline_bound_stream_ends_with_what_it_made(
    stub: Any, tiny_server: InProcessServer
) -> None:
    ids = ids_of(tiny_server, "Tell a story")
    call = stub.Generate(
        vpb.GenerateRequest(
            tokenized=vpb.TokenizedInput(input_ids=ids),
            sampling_params=greedy(max_tokens=1500, ignore_eos=True),
            stream=True,
        ),
        timeout=2.0,
    )
    done = complete_of(list(call))
    assert done.finish_reason == "abort" and 0 < done.completion_tokens < 1500
    assert engine_idle(tiny_server)


def test_loads_info_and_flush(stub: Any, tiny_server: InProcessServer) -> None:
    loads = stub.GetLoads(vpb.GetLoadsRequest(), timeout=10)
    assert loads.dp_rank_count == 1 and len(loads.loads) == 1
    load = loads.loads[0]
    assert load.max_total_num_tokens > 0 and 0.0 <= load.token_usage <= 1.0
    assert 0.0 <= load.cache_hit_rate <= 1.0
    info = stub.GetModelInfo(vpb.GetModelInfoRequest(), timeout=10)
    ours = generation_pb2_grpc.GenerationStub(tiny_server.channel()).GetModelInfo(
        generation_pb2.GetModelInfoRequest()
    )
    assert info.served_model_name == ours.served_model_name
    assert info.max_context_length == ours.max_context_length
    assert list(info.eos_token_ids) and info.is_generation
    server_info = stub.GetServerInfo(vpb.GetServerInfoRequest(), timeout=10)
    assert server_info.server_type == "zopilot-grpc" and not server_info.is_paused
    assert stub.HealthCheck(vpb.HealthCheckRequest(), timeout=10).healthy
    # FlushCache drops the prefix a finished request left: the same prompt again finds
    # nothing cached.
    ids = ids_of(tiny_server, "A shared system prompt that is long enough " * 4)
    generate(stub, ids, greedy(max_tokens=2))
    again = complete_of(generate(stub, ids, greedy(max_tokens=2)))
    assert again.cached_tokens >= 16
    flushed = stub.FlushCache(cpb.FlushCacheRequest(), timeout=30)
    assert flushed.success and "dropped" in flushed.message
    after = complete_of(generate(stub, ids, greedy(max_tokens=2)))
    assert after.cached_tokens == 0


def test_unimplemented_say_why(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.SubscribeKvEvents(cpb.SubscribeKvEventsRequest(), timeout=10))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "prefix" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Embed(vpb.EmbedRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _hostile(vocab: int) -> dict[str, tuple[Any, str]]:
    tok = vpb.TokenizedInput(input_ids=[1, 2, 3])

    def req(**kw: Any) -> Any:
        kw.setdefault("tokenized", tok)
        return vpb.GenerateRequest(**kw)

    return {
        "no input": (vpb.GenerateRequest(), "input"),
        "empty token list": (req(tokenized=vpb.TokenizedInput()), "tokenized.input_ids"),
        "id outside the vocabulary": (
            req(tokenized=vpb.TokenizedInput(input_ids=[1, vocab + 5])),
            "tokenized.input_ids",
        ),
        "huge token list": (
            req(tokenized=vpb.TokenizedInput(input_ids=[1] * 300_000)),
            "tokenized.input_ids",
        ),
        "min_p": (req(sampling_params=vpb.SamplingParams(min_p=0.1)), "sampling_params.min_p"),
        "presence penalty": (
            req(sampling_params=vpb.SamplingParams(presence_penalty=0.5)),
            "sampling_params.presence_penalty",
        ),
        "n > 1": (req(sampling_params=vpb.SamplingParams(n=2)), "sampling_params.n"),
        "logit_bias": (
            req(sampling_params=vpb.SamplingParams(logit_bias={5: 1.0})),
            "sampling_params.logit_bias",
        ),
        "prompt logprobs": (
            req(sampling_params=vpb.SamplingParams(prompt_logprobs=1)),
            "sampling_params.prompt_logprobs",
        ),
        "all logprobs": (
            req(sampling_params=vpb.SamplingParams(logprobs=-1)),
            "sampling_params.logprobs",
        ),
        "too many logprobs": (
            req(sampling_params=vpb.SamplingParams(logprobs=10_000)),
            "sampling_params.logprobs",
        ),
        "grammar": (
            req(sampling_params=vpb.SamplingParams(grammar="x")),
            "sampling_params.grammar",
        ),
        "bad schema": (
            req(sampling_params=vpb.SamplingParams(json_schema="{not json")),
            "sampling_params.json_schema",
        ),
        "max_tokens too large": (
            req(sampling_params=vpb.SamplingParams(max_tokens=4_000_000_000)),
            "sampling_params.max_tokens",
        ),
        "temperature": (
            req(sampling_params=vpb.SamplingParams(temperature=-1.0)),
            "sampling_params.temperature",
        ),
        "negative seed": (req(sampling_params=vpb.SamplingParams(seed=-3)), "sampling_params.seed"),
        "multimodal": (req(mm_inputs=vpb.MultimodalInputs()), "mm_inputs"),
        "kv transfer": (req(kv_transfer_params_json="{}"), "kv_transfer_params_json"),
        "long request id": (req(request_id="x" * 10_000), "request_id"),
    }


HOSTILE_CASES = sorted(_hostile(49152))


def test_every_hostile_case_runs() -> None:
    assert sorted(_hostile(49152)) == HOSTILE_CASES


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_hostile_requests(stub: Any, tiny_server: InProcessServer, case: str) -> None:
    vocab = stub.GetModelInfo(vpb.GetModelInfoRequest(), timeout=10).vocab_size
    request, field = _hostile(vocab)[case]
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Generate(request, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert field in field_violations(caught.value), caught.value.details()
    assert stub.HealthCheck(vpb.HealthCheckRequest(), timeout=10).healthy


def test_malformed_bytes(tiny_server: InProcessServer) -> None:
    with tiny_server.channel() as channel:
        for method, streaming in (("Generate", True), ("GetLoads", False), ("Abort", False)):
            path = f"/vllm.grpc.engine.VllmEngine/{method}"
            call = channel.unary_stream(path) if streaming else channel.unary_unary(path)
            with pytest.raises(grpc.RpcError) as caught:
                result = call(b"\xff\xff\xff", timeout=10)
                if streaming:
                    list(result)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method


def _failures(port: int) -> float:
    """This process's count of INVALID_ARGUMENT VllmEngine/Generate calls (the registry
    is the process's: earlier tests' servers counted into it too)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        lines = reply.read().decode().splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("zopilot_request_failure_total")
        and 'method="vllm.grpc.engine.VllmEngine/Generate"' in line
        and 'code="INVALID_ARGUMENT"' in line
    )


def test_auth_and_metrics_apply(make_server: Any) -> None:
    port = free_port()
    server = make_server(api_key="k" * 32, metrics_port=port, doc_prestart=False)
    auth = (("authorization", "Bearer " + "k" * 32),)
    before = _failures(port)
    with server.channel() as channel:
        stub = vpb_grpc.VllmEngineStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetLoads(vpb.GetLoadsRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.GetLoads(vpb.GetLoadsRequest(), timeout=10, metadata=auth).dp_rank_count == 1
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Generate(vpb.GenerateRequest(), timeout=10, metadata=auth))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _failures(port) == before + 1


def test_smollm2_answers_paris(smollm2_server: InProcessServer) -> None:
    question = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    with smollm2_server.channel() as channel:
        stub = vpb_grpc.VllmEngineStub(channel)
        archive = _tokenizer_zip(stub)
        tokenizer = _tokenizer_from(archive)
        ids = tokenizer.encode(question, add_special_tokens=False).ids
        done = complete_of(generate(stub, ids, greedy(max_tokens=16)))
    assert "Paris" in tokenizer.decode(list(done.output_ids))
    assert done.finish_reason == "stop"
