"""KServe v2 / Triton requests the server refuses, and its serving state: hostile unary
and streamed requests (each a clear status, never UNKNOWN or INTERNAL, the stream kept),
wrong shapes and raw data, unknown models, malformed bytes, the --protocols flag and
reflection, readiness while loading and draining, and the API key.
"""

from __future__ import annotations

import contextlib
import queue
from typing import Any

import grpc
import pytest
import tritonclient.grpc as triton
from kserve_calls import generation_stub, llm_inputs, model_name, tensor, zopilot_text
from support import InProcessServer
from tritonclient.grpc import service_pb2 as triton_pb
from tritonclient.grpc import service_pb2_grpc as triton_grpc
from tritonclient.utils import InferenceServerException
from zopilot_client.pb import generation_pb2

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
            generation_stub(channel).GetModelInfo(generation_pb2.GetModelInfoRequest())
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
