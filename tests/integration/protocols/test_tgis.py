"""TGIS fmaas.GenerationService through a client generated at test time, with grpcio-tools,
from the TGIS proto as published (our copy of IBM/text-generation-inference
proto/generation.proto in protos/fmaas, compiled under its published file name
``generation.proto`` into the default descriptor pool, as a TGIS client would be): not
the server's own stubs. The tiny model checks mechanics against zopilot.v1 Generate;
SmolLM2 checks the one real answer."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import grpc
import pytest
from support import InProcessServer, engine_idle, field_violations
from zopilot_client.pb import generation_pb2, generation_pb2_grpc


@pytest.fixture
def stub(tgis: Any, tiny_server: InProcessServer) -> Iterator[Any]:
    with tiny_server.channel() as channel:
        yield tgis[1].GenerationServiceStub(channel)


def zopilot(server: InProcessServer) -> Any:
    return generation_pb2_grpc.GenerationStub(server.channel())


def zopilot_text(server: InProcessServer, prompt: str, max_new_tokens: int) -> str:
    request = generation_pb2.GenerateRequest(prompt=prompt, max_new_tokens=max_new_tokens)
    return zopilot(server).Generate(request).text


def params(tpb: ModuleType, max_new_tokens: int = 5, **response: Any) -> Any:
    return tpb.Parameters(
        stopping=tpb.StoppingCriteria(max_new_tokens=max_new_tokens),
        response=tpb.ResponseOptions(**response),
    )


def test_model_info_matches_ours(tgis: Any, stub: Any, tiny_server: InProcessServer) -> None:
    tpb = tgis[0]
    ours = zopilot(tiny_server).GetModelInfo(generation_pb2.GetModelInfoRequest())
    info = stub.ModelInfo(tpb.ModelInfoRequest(model_id=ours.served_model_name))
    assert info.model_kind == tpb.ModelInfoResponse.DECODER_ONLY
    assert info.max_sequence_length == ours.max_context_length
    assert info.max_new_tokens == ours.max_new_tokens_limit
    assert stub.ModelInfo(tpb.ModelInfoRequest()) == info  # model_id may be left empty


def test_generate_stream(tgis: Any, stub: Any, tiny_server: InProcessServer) -> None:
    tpb = tgis[0]
    request = tpb.SingleGenerationRequest(
        request=tpb.GenerationRequest(text="Once upon a time"),
        params=params(tpb, 6, generated_tokens=True, token_logprobs=True),
    )
    responses = list(stub.GenerateStream(request, timeout=30))
    first, rest = responses[0], responses[1:]
    count = zopilot(tiny_server).Tokenize(
        generation_pb2.TokenizeRequest(text="Once upon a time", add_special_tokens=True)
    )
    assert first.input_token_count == count.token_count  # TGIS: the first message only
    assert first.text == "" and first.generated_token_count == 0 and not first.tokens
    assert "".join(r.text for r in rest) == zopilot_text(tiny_server, "Once upon a time", 6)
    assert [r.generated_token_count for r in rest] == sorted(r.generated_token_count for r in rest)
    last = rest[-1]
    assert last.stop_reason == tpb.MAX_TOKENS and last.generated_token_count == 6
    assert sum(len(r.tokens) for r in rest) == 6
    assert all(t.logprob <= 0 for r in rest for t in r.tokens)
    assert all(r.stop_reason == tpb.NOT_FINISHED for r in responses[:-1])
    assert last.seed == 0  # greedy: no seed


def test_generate_batch_runs_each_request(
    tgis: Any, stub: Any, tiny_server: InProcessServer
) -> None:
    tpb = tgis[0]
    prompts = ["Hello", "The sky is", "Once upon a time"]
    request = tpb.BatchedGenerationRequest(
        requests=[tpb.GenerationRequest(text=p) for p in prompts],
        params=params(tpb, 4, input_text=True),
    )
    responses = stub.Generate(request, timeout=60).responses
    assert [r.text for r in responses] == [p + zopilot_text(tiny_server, p, 4) for p in prompts]
    assert all(r.generated_token_count == 4 and r.stop_reason == tpb.MAX_TOKENS for r in responses)


def test_sampling_reports_its_seed(tgis: Any, stub: Any) -> None:
    tpb = tgis[0]
    sampled = tpb.Parameters(
        method=tpb.SAMPLE,
        sampling=tpb.SamplingParameters(temperature=0.8, top_k=20, seed=1234),
        stopping=tpb.StoppingCriteria(max_new_tokens=5),
    )
    request = tpb.BatchedGenerationRequest(
        requests=[tpb.GenerationRequest(text="Hi")] * 2, params=sampled
    )
    one, two = stub.Generate(request, timeout=30).responses
    assert one.seed == two.seed == 1234 and one.text == two.text


def test_tokenize(tgis: Any, stub: Any, tiny_server: InProcessServer) -> None:
    tpb = tgis[0]
    request = tpb.BatchedTokenizeRequest(
        requests=[tpb.TokenizeRequest(text="Hello world"), tpb.TokenizeRequest(text="a b c")],
        return_tokens=True,
        return_offsets=True,
    )
    responses = stub.Tokenize(request).responses
    for item, response in zip(request.requests, responses, strict=True):
        ours = zopilot(tiny_server).Tokenize(
            generation_pb2.TokenizeRequest(text=item.text, add_special_tokens=True)
        )
        assert response.token_count == ours.token_count
        assert list(response.tokens) == list(ours.tokens)
        assert [(o.start, o.end) for o in response.offsets] == [
            (o.start, o.end) for o in ours.offsets
        ]


def test_cancelled_stream_leaves_the_batch(
    tgis: Any, stub: Any, tiny_server: InProcessServer
) -> None:
    tpb = tgis[0]
    request = tpb.SingleGenerationRequest(
        request=tpb.GenerationRequest(text="Tell a story"), params=params(tpb, 1500)
    )
    call = stub.GenerateStream(request)
    next(call), next(call)
    call.cancel()
    assert engine_idle(tiny_server)


def _hostile(tpb: ModuleType) -> dict[str, tuple[str, Any, grpc.StatusCode, str]]:
    text = tpb.GenerationRequest(text="x")
    single = tpb.SingleGenerationRequest
    return {
        "unknown model": (
            "ModelInfo",
            tpb.ModelInfoRequest(model_id="no-such-model"),
            grpc.StatusCode.NOT_FOUND,
            "model_id",
        ),
        "unknown model, stream": (
            "GenerateStream",
            single(model_id="no-such-model", request=text),
            grpc.StatusCode.NOT_FOUND,
            "model_id",
        ),
        "prefix_id": (
            "GenerateStream",
            single(prefix_id="p", request=text),
            grpc.StatusCode.INVALID_ARGUMENT,
            "prefix_id",
        ),
        "length penalty": (
            "GenerateStream",
            single(
                request=text,
                params=tpb.Parameters(
                    decoding=tpb.DecodingParameters(
                        length_penalty=tpb.DecodingParameters.LengthPenalty(decay_factor=1.1)
                    )
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "params.decoding.length_penalty",
        ),
        "typical_p": (
            "GenerateStream",
            single(
                request=text,
                params=tpb.Parameters(
                    method=tpb.SAMPLE, sampling=tpb.SamplingParameters(typical_p=0.5)
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "params.sampling.typical_p",
        ),
        "sampling with greedy": (
            "GenerateStream",
            single(
                request=text,
                params=tpb.Parameters(sampling=tpb.SamplingParameters(temperature=0.7)),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "params.sampling",
        ),
        "token ranks": (
            "GenerateStream",
            single(
                request=text, params=tpb.Parameters(response=tpb.ResponseOptions(token_ranks=True))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "params.response.token_ranks",
        ),
        "input tokens": (
            "GenerateStream",
            single(
                request=text, params=tpb.Parameters(response=tpb.ResponseOptions(input_tokens=True))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "params.response.input_tokens",
        ),
        "max_new_tokens too large, in TGIS names": (
            "GenerateStream",
            single(
                request=text,
                params=tpb.Parameters(stopping=tpb.StoppingCriteria(max_new_tokens=10**6)),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "params.stopping.max_new_tokens",
        ),
        "empty text": (
            "GenerateStream",
            single(request=tpb.GenerationRequest(text="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "request.text",
        ),
        "oversized text": (
            "GenerateStream",
            single(request=tpb.GenerationRequest(text="a" * 300_000)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "request.text",
        ),
        "empty batch": (
            "Generate",
            tpb.BatchedGenerationRequest(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests",
        ),
        "oversized batch": (
            "Generate",
            tpb.BatchedGenerationRequest(requests=[text] * 1000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests",
        ),
        "one bad request in a batch": (
            "Generate",
            tpb.BatchedGenerationRequest(requests=[text, tpb.GenerationRequest(text="")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests[1].text",
        ),
        "empty tokenize text": (
            "Tokenize",
            tpb.BatchedTokenizeRequest(requests=[tpb.TokenizeRequest(text="")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests[0].text",
        ),
    }


HOSTILE_CASES = [
    "unknown model",
    "unknown model, stream",
    "prefix_id",
    "length penalty",
    "typical_p",
    "sampling with greedy",
    "token ranks",
    "input tokens",
    "max_new_tokens too large, in TGIS names",
    "empty text",
    "oversized text",
    "empty batch",
    "oversized batch",
    "one bad request in a batch",
    "empty tokenize text",
]


def test_every_hostile_case_runs(tgis: Any) -> None:
    assert sorted(_hostile(tgis[0])) == sorted(HOSTILE_CASES)


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_hostile_requests(tgis: Any, stub: Any, case: str) -> None:
    method, request, code, field = _hostile(tgis[0])[case]
    call = getattr(stub, method)
    with pytest.raises(grpc.RpcError) as caught:
        result = call(request, timeout=30)
        if method == "GenerateStream":
            list(result)
    assert caught.value.code() == code, caught.value.details()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert field in field_violations(caught.value), caught.value.details()
    else:
        assert field in caught.value.details()


def test_malformed_bytes(tiny_server: InProcessServer) -> None:
    with tiny_server.channel() as channel:
        for method in ("Generate", "GenerateStream", "Tokenize", "ModelInfo"):
            path = f"/fmaas.GenerationService/{method}"
            call = (
                channel.unary_stream(path)
                if method == "GenerateStream"
                else channel.unary_unary(path)
            )
            with pytest.raises(grpc.RpcError) as caught:
                result = call(b"\xff\xff\xff", timeout=10)
                if method == "GenerateStream":
                    list(result)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method


def test_smollm2_streams_paris(tgis: Any, smollm2_server: InProcessServer) -> None:
    tpb, tpb_grpc = tgis
    with smollm2_server.channel() as channel:
        stub = tpb_grpc.GenerationServiceStub(channel)
        request = tpb.SingleGenerationRequest(
            model_id="SmolLM2-135M-Instruct",
            request=tpb.GenerationRequest(text="The capital of France is"),
            params=params(tpb, 4),
        )
        texts = [r.text for r in stub.GenerateStream(request, timeout=60)]
    assert texts[0] == "" and texts[1] == " Paris", texts
