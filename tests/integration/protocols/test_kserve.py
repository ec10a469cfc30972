"""KServe v2 / Triton inference.GRPCInferenceService through the real tritonclient (sync
and aio): metadata, unary and streamed inference, multiplexing and cancellation on one
ModelStreamInfer stream (the refused requests: test_kserve_refusals.py). The tiny model
checks the mechanics (its text is nonsense, so outputs are compared with zopilot.v1
Generate of the same request); SmolLM2 checks the one real answer."""

from __future__ import annotations

import asyncio
import queue
from typing import Any

import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from kserve_calls import generation_stub, llm_inputs, model_name, tensor, zopilot_text
from support import InProcessServer, engine_idle, wait_until
from tritonclient.utils import InferenceServerException
from zopilot_client.pb import generation_pb2
from zopilot_server.protocols.kserve import stream_request_limit


def test_liveness_readiness_and_metadata(
    client: triton.InferenceServerClient, name: str, tiny_config: Any
) -> None:
    assert name == "tiny-llama" or name.startswith("tiny-llama")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    assert client.get_server_metadata(as_json=True)["name"] == "zopilot"
    metadata = client.get_model_metadata(name, as_json=True)
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]}
    assert inputs["text_input"] == ("BYTES", ["1"])  # int64 shapes are strings in JSON
    assert inputs["stream"] == ("BOOL", ["1"])
    assert inputs["sampling_parameters"] == ("BYTES", ["1"])
    assert {t["name"] for t in metadata["outputs"]} >= {"text_output", "finish_reason"}
    config = client.get_model_config(name).config
    assert config.name == name and config.model_transaction_policy.decoupled
    assert [m.name for m in client.get_model_repository_index().models] == [name]


def test_unary_infer_returns_prompt_and_generation(
    client: triton.InferenceServerClient, tiny_server: InProcessServer, name: str
) -> None:
    expected = zopilot_text(tiny_server, "Once upon a time", 6)
    result = client.infer(name, llm_inputs("Once upon a time", max_tokens="6"))
    # vLLM backend default when not streaming: the prompt, then the generated text.
    assert result.as_numpy("text_output")[0].decode() == "Once upon a time" + expected
    extras = [
        tensor("text_input", "Once upon a time"),
        tensor("sampling_parameters", {"max_tokens": 6}),
        tensor("exclude_input_in_output", True),
        tensor("return_finish_reason", True),
        tensor("return_num_input_tokens", True),
        tensor("return_num_output_tokens", True),
    ]
    result = client.infer(name, extras, request_id="unary-1")
    assert result.get_response().id == "unary-1"
    assert result.as_numpy("text_output")[0].decode() == expected
    assert result.as_numpy("finish_reason")[0] == b"length"
    assert int(result.as_numpy("num_output_tokens")[0]) == 6
    with tiny_server.channel() as channel:
        count = (
            generation_stub(channel)
            .Tokenize(
                generation_pb2.TokenizeRequest(text="Once upon a time", add_special_tokens=True)
            )
            .token_count
        )
    assert int(result.as_numpy("num_input_tokens")[0]) == count


def test_stream_two_requests_multiplexed_and_half_close_finishes_them(
    client: triton.InferenceServerClient, tiny_server: InProcessServer, name: str
) -> None:
    """Two requests on one stream: each id gets its own responses, in order, the last one
    flagged final; stop_stream() (a half-close) waits for both to finish."""
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    client.async_stream_infer(name, llm_inputs("Hello", stream=True, max_tokens=8), request_id="a")
    client.async_stream_infer(
        name, llm_inputs("Goodbye", stream=True, max_tokens=5), request_id="b"
    )
    client.stop_stream()  # half-close: returns once the server ended the stream
    texts: dict[str, list[str]] = {"a": [], "b": []}
    finals: dict[str, list[bool]] = {"a": [], "b": []}
    while not responses.empty():
        result, error = responses.get()
        assert error is None, error
        response = result.get_response()
        texts[response.id].append(result.as_numpy("text_output")[0].decode())
        finals[response.id].append(response.parameters["triton_final_response"].bool_param)
    assert "".join(texts["a"]) == zopilot_text(tiny_server, "Hello", 8)
    assert "".join(texts["b"]) == zopilot_text(tiny_server, "Goodbye", 5)
    for flags in finals.values():
        assert len(flags) >= 2 and flags[-1] and not any(flags[:-1])


def test_aio_client_streams(tiny_server: InProcessServer, name: str) -> None:
    async def run() -> list[Any]:
        async with triton_aio.InferenceServerClient(tiny_server.target) as aio_client:

            async def requests() -> Any:
                inputs = llm_inputs("Hi there", stream=True, max_tokens=4)
                yield {"model_name": name, "inputs": inputs, "request_id": "aio"}

            out = []
            async for result, error in aio_client.stream_infer(requests()):
                assert error is None, error
                out.append(result)
                if result.get_response().parameters["triton_final_response"].bool_param:
                    break
            return out

    results = asyncio.run(run())
    assert {r.get_response().id for r in results} == {"aio"}
    text = "".join(r.as_numpy("text_output")[0].decode() for r in results)
    assert text == zopilot_text(tiny_server, "Hi there", 4)


def test_empty_final_response(
    client: triton.InferenceServerClient, tiny_server: InProcessServer, name: str
) -> None:
    got: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    inputs = llm_inputs("Hi there", stream=True, max_tokens=4)
    client.async_stream_infer(name, inputs, request_id="e", enable_empty_final_response=True)
    client.stop_stream()
    results = []
    while not got.empty():
        result, error = got.get()
        assert error is None, error
        results.append(result)
    last = results[-1].get_response()
    assert last.id == "e" and not last.outputs  # the empty final response
    assert last.parameters["triton_final_response"].bool_param
    text = "".join(r.as_numpy("text_output")[0].decode() for r in results[:-1])
    assert text == zopilot_text(tiny_server, "Hi there", 4)
    assert not any(
        r.get_response().parameters["triton_final_response"].bool_param for r in results[:-1]
    )


def test_triton_request_parameters_are_refused_by_name(
    client: triton.InferenceServerClient, name: str
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(name, llm_inputs("x", max_tokens=2), priority=3)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "parameters[priority]" in caught.value.message()
    # vLLM's other place for sampling parameters: the request parameters.
    result = client.infer(name, [tensor("text_input", "x")], parameters={"max_tokens": 2})
    assert result.as_numpy("text_output")[0].startswith(b"x")


def test_cancelled_stream_leaves_the_batch(
    client: triton.InferenceServerClient, tiny_server: InProcessServer, name: str
) -> None:
    got: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    for index in range(3):
        client.async_stream_infer(
            name,
            llm_inputs("Tell a story", stream=True, max_tokens=1500, ignore_eos=True),
            request_id=f"long-{index}",
        )
    got.get(timeout=30)
    engine = tiny_server.running.engine
    assert engine is not None and wait_until(lambda: engine.active_count == 3)
    client.stop_stream(cancel_requests=True)
    assert engine_idle(tiny_server)


def test_flooded_stream_is_bounded(
    client: triton.InferenceServerClient, tiny_server: InProcessServer, name: str
) -> None:
    """More requests than the stream may hold: the excess is refused at once with
    RESOURCE_EXHAUSTED, the stream goes on, and cancelling it clears the engine."""
    limit = stream_request_limit(tiny_server.config)
    errors: queue.Queue[str] = queue.Queue()
    client.start_stream(callback=lambda result, error: error and errors.put(str(error)))
    for index in range(limit + 12):
        client.async_stream_infer(
            name,
            llm_inputs("flood", stream=True, max_tokens=1500, ignore_eos=True),
            request_id=f"f{index}",
        )
    refused = [errors.get(timeout=30) for _ in range(12)]
    assert all("RESOURCE_EXHAUSTED" in e and "in flight" in e for e in refused), refused
    assert {e.split("]")[0] for e in refused} == {
        f"[request id: f{i}" for i in range(limit, limit + 12)
    }
    client.stop_stream(cancel_requests=True)
    assert engine_idle(tiny_server)


def test_duplicate_id_in_flight_is_refused(
    client: triton.InferenceServerClient, tiny_server: InProcessServer, name: str
) -> None:
    got: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    long = llm_inputs("x", stream=True, max_tokens=1500, ignore_eos=True)
    client.async_stream_infer(name, long, request_id="same")
    client.async_stream_infer(name, long, request_id="same")
    error = None
    while error is None:
        _, error = got.get(timeout=30)
    assert "INVALID_ARGUMENT" in str(error) and "still in flight" in str(error)
    client.stop_stream(cancel_requests=True)
    assert engine_idle(tiny_server)


def test_smollm2_streams_paris(smollm2_server: InProcessServer) -> None:
    name = model_name(smollm2_server)
    assert name == "SmolLM2-135M-Instruct"
    responses: queue.Queue[Any] = queue.Queue()
    with triton.InferenceServerClient(smollm2_server.target) as smol:
        smol.start_stream(callback=lambda result, error: responses.put((result, error)))
        smol.async_stream_infer(
            name, llm_inputs("The capital of France is", stream=True, max_tokens=4), request_id="p"
        )
        smol.stop_stream()
    chunks = []
    while not responses.empty():
        result, error = responses.get()
        assert error is None, error
        chunks.append(result.as_numpy("text_output")[0].decode())
    assert len(chunks) >= 2 and chunks[0] == " Paris", chunks
