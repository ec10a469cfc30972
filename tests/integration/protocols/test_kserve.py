"""KServe v2 / Triton inference.GRPCInferenceService through the real tritonclient (sync
and aio): metadata, unary and streamed inference, multiplexing and cancellation on one
ModelStreamInfer stream, and hostile requests. The tiny model checks the mechanics (its
text is nonsense, so outputs are compared with zopilot.v1 Generate of the same request);
SmolLM2 checks the one real answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from support import InProcessServer, engine_idle, wait_until
from tritonclient.grpc import service_pb2 as triton_pb
from tritonclient.grpc import service_pb2_grpc as triton_grpc
from tritonclient.utils import InferenceServerException
from zopilot_client.pb import generation_pb2
from zopilot_server.protocols.kserve import stream_request_limit

BAD_CODES = ("StatusCode.UNKNOWN", "StatusCode.INTERNAL")


def model_name(server: InProcessServer) -> str:
    with server.channel() as channel:
        stub = generation_pb2_grpc_stub(channel)
        return stub.GetModelInfo(generation_pb2.GetModelInfoRequest()).served_model_name


def generation_pb2_grpc_stub(channel: grpc.Channel) -> Any:
    from zopilot_client.pb import generation_pb2_grpc

    return generation_pb2_grpc.GenerationStub(channel)


def zopilot_text(server: InProcessServer, prompt: str, max_new_tokens: int) -> str:
    """What zopilot.v1 Generate answers for the same greedy request."""
    with server.channel() as channel:
        request = generation_pb2.GenerateRequest(prompt=prompt, max_new_tokens=max_new_tokens)
        return generation_pb2_grpc_stub(channel).Generate(request).text


def tensor(name: str, value: Any, datatype: str | None = None) -> triton.InferInput:
    if isinstance(value, bool):
        array = np.array([value], dtype=bool)
        datatype = datatype or "BOOL"
    elif isinstance(value, (dict, str)):
        text = value if isinstance(value, str) else json.dumps(value)
        array = np.array([text.encode()], dtype=np.object_)
        datatype = datatype or "BYTES"
    else:
        array = np.array([value], dtype=np.int32)
        datatype = datatype or "INT32"
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def llm_inputs(prompt: str, *, stream: bool = False, **sampling: Any) -> list[triton.InferInput]:
    return [
        tensor("text_input", prompt),
        tensor("stream", stream),
        tensor("sampling_parameters", sampling),
    ]


@pytest.fixture(scope="module")
def client(tiny_server: InProcessServer) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(tiny_server.target) as triton_client:
        yield triton_client


@pytest.fixture(scope="module")
def name(tiny_server: InProcessServer) -> str:
    return model_name(tiny_server)


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
            generation_pb2_grpc_stub(channel)
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


HOSTILE_UNARY = {
    "missing text_input": ([tensor("stream", False)], "inputs[text_input]"),
    "text_input as INT32": ([tensor("text_input", 7)], "must be BYTES"),
    "bad JSON": (
        [tensor("text_input", "x"), tensor("sampling_parameters", "{max_tokens: 3")],
        "not valid JSON",
    ),
    "JSON not an object": (
        [tensor("text_input", "x"), tensor("sampling_parameters", "[1, 2]")],
        "JSON object",
    ),
    "deeply nested JSON": (
        [tensor("text_input", "x"), tensor("sampling_parameters", "[" * 100_000)],
        "sampling_parameters",
    ),
    "unknown key": (
        [tensor("text_input", "x"), tensor("sampling_parameters", {"max_tokenz": 3})],
        "unknown key 'max_tokenz'",
    ),
    "wrong value type": (
        [tensor("text_input", "x"), tensor("sampling_parameters", {"temperature": "hot"})],
        "sampling_parameters.temperature",
    ),
    "out of range, in the client's names": (
        [tensor("text_input", "x"), tensor("sampling_parameters", {"max_tokens": 10**6})],
        "sampling_parameters.max_tokens",
    ),
    "unsupported n": (
        [tensor("text_input", "x"), tensor("sampling_parameters", {"n": 2})],
        "sampling_parameters.n",
    ),
    "unknown input": ([tensor("text_input", "x"), tensor("prompt", "y")], "unknown input 'prompt'"),
    "stream on unary": ([tensor("text_input", "x"), tensor("stream", True)], "ModelStreamInfer"),
    "oversized prompt": ([tensor("text_input", "a" * 300_000)], "inputs[text_input]"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_UNARY))
def test_hostile_unary_requests(client: triton.InferenceServerClient, name: str, case: str) -> None:
    inputs, expected = HOSTILE_UNARY[case]
    with pytest.raises(InferenceServerException) as caught:
        client.infer(name, inputs)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
    assert expected in caught.value.message()


def test_wrong_shape_and_raw_data(tiny_server: InProcessServer, name: str) -> None:
    """Shapes and raw bytes tritonclient would not send, through its own stubs."""
    with tiny_server.channel() as channel:
        stub = triton_grpc.GRPCInferenceServiceStub(channel)

        def infer(shape: list[int], raw: bytes) -> grpc.RpcError:
            request = triton_pb.ModelInferRequest(model_name=name)
            request.inputs.add(name="text_input", datatype="BYTES", shape=shape)
            request.raw_input_contents.append(raw)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request, timeout=10)
            return caught.value

        error = infer([2], b"\x01\x00\x00\x00a\x01\x00\x00\x00b")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "shape" in error.details()
        error = infer([1], b"\xff\xff\xff\x7fa")  # a length far beyond the data
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "raw BYTES" in error.details()
        error = infer([1], b"\x02\x00\x00\x00\xff\xfe")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in error.details()


def test_unknown_model_is_not_found(client: triton.InferenceServerClient, name: str) -> None:
    calls = {
        "infer": lambda: client.infer("no-such-model", llm_inputs("x")),
        "ready": lambda: client.is_model_ready("no-such-model"),
        "metadata": lambda: client.get_model_metadata("no-such-model"),
        "config": lambda: client.get_model_config("no-such-model"),
        "version": lambda: client.get_model_metadata(name, model_version="7"),
    }
    for call in calls.values():
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == "StatusCode.NOT_FOUND", caught.value


def test_stream_request_errors_keep_the_stream(
    client: triton.InferenceServerClient, tiny_server: InProcessServer, name: str
) -> None:
    got: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    client.async_stream_infer("no-such-model", llm_inputs("x", stream=True), request_id="bad1")
    bad_json = [
        tensor("text_input", "x"),
        tensor("stream", True),
        tensor("sampling_parameters", "{"),
    ]
    client.async_stream_infer(name, bad_json, request_id="bad2")
    client.async_stream_infer(name, llm_inputs("ok", stream=True, max_tokens=3), request_id="ok")
    client.stop_stream()
    items = []
    while not got.empty():
        items.append(got.get())
    errors = sorted(str(e) for _, e in items if e is not None)
    assert len(errors) == 2
    assert "[request id: bad1] NOT_FOUND" in errors[0]
    assert "[request id: bad2] INVALID_ARGUMENT" in errors[1] and "JSON" in errors[1]
    text = "".join(r.as_numpy("text_output")[0].decode() for r, e in items if e is None)
    assert text == zopilot_text(tiny_server, "ok", 3)


def test_malformed_bytes(tiny_server: InProcessServer) -> None:
    with tiny_server.channel() as channel:
        method = "/inference.GRPCInferenceService/ModelInfer"
        unary = channel.unary_unary(method)
        with pytest.raises(grpc.RpcError) as caught:
            unary(b"\xff\xff\xff", timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # On the stream: the bad message gets an error response and the stream goes on.
        good = triton_pb.ModelInferRequest(
            model_name="no-such-model", id="after"
        ).SerializeToString()
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            response_deserializer=triton_pb.ModelStreamInferResponse.FromString,
        )
        responses = list(stream(iter([b"\xff\xff\xff", good]), timeout=10))
    assert "INVALID_ARGUMENT" in responses[0].error_message
    assert responses[1].infer_response.id == "after" and "NOT_FOUND" in responses[1].error_message


def test_protocols_flag_and_reflection(make_server: Any) -> None:
    server = make_server(protocols="kserve")
    with server.channel() as channel:
        with pytest.raises(grpc.RpcError) as caught:
            generation_pb2_grpc_stub(channel).GetModelInfo(generation_pb2.GetModelInfoRequest())
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with triton.InferenceServerClient(server.target) as kserve_client:
        assert kserve_client.is_server_ready()
    assert server.health("inference.GRPCInferenceService") == 1  # SERVING
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    assert grpcurl
    listing = subprocess.run(
        [grpcurl, "-plaintext", server.target, "list"], capture_output=True, text=True, timeout=30
    )
    assert "inference.GRPCInferenceService" in listing.stdout.split()
    assert "zopilot.v1.Generation" not in listing.stdout.split()
    described = subprocess.run(
        [grpcurl, "-plaintext", server.target, "describe", "inference.ModelInferRequest"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "raw_input_contents" in described.stdout, described.stderr


def test_readiness_while_the_model_loads(tiny_config: Any) -> None:
    import threading

    from zopilot_server.generation.loading.model_loader import load_model

    release = threading.Event()

    def slow_loader(config: Any) -> Any:
        release.wait(30)
        return load_model(config)

    server = InProcessServer(tiny_config, loader=slow_loader, wait_ready=False)
    try:
        with triton.InferenceServerClient(server.target) as loading:
            assert loading.is_server_live() and not loading.is_server_ready()
            assert not loading.is_model_ready("anything")
            with pytest.raises(InferenceServerException) as caught:
                loading.infer("anything", llm_inputs("x"))
            assert caught.value.status() == "StatusCode.UNAVAILABLE"
            release.set()
            server.wait_ready()
            assert loading.is_server_ready()
    finally:
        release.set()
        server.stop()


def test_draining_server_is_not_ready_and_refuses(make_server: Any) -> None:
    server = make_server()
    name = model_name(server)
    engine = server.running.engine
    assert engine is not None
    engine.drain(0.0)  # what SIGTERM starts (RunningServer.stop)
    with triton.InferenceServerClient(server.target) as client:
        assert client.is_server_live() and not client.is_server_ready()
        assert not client.is_model_ready(name)
        with pytest.raises(InferenceServerException) as caught:
            client.infer(name, llm_inputs("x", max_tokens=2))
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        assert "draining" in caught.value.message()


def test_api_key_applies_to_kserve(make_server: Any) -> None:
    server = make_server(api_key="sekret", protocols="kserve")
    with triton.InferenceServerClient(server.target) as anonymous:
        with pytest.raises(InferenceServerException) as caught:
            anonymous.is_server_ready()
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        got: queue.Queue[Any] = queue.Queue()
        anonymous.start_stream(callback=lambda result, error: got.put(error))
        # The server refuses the stream at once; tritonclient may already know when the
        # request is enqueued (then it raises), and reports the status to the callback.
        with contextlib.suppress(InferenceServerException):
            anonymous.async_stream_infer("any", llm_inputs("x", stream=True))
        assert "UNAUTHENTICATED" in str(got.get(timeout=30))
        anonymous.stop_stream(cancel_requests=True)
    with triton.InferenceServerClient(server.target) as client:
        assert client.is_server_ready(headers={"authorization": "Bearer sekret"})


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
