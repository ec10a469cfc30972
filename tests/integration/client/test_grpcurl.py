"""The real grpcurl binary against the real server: what an engineer types works."""

from __future__ import annotations

import json

import pytest
from cli_tools import grpcurl


def json_stream(output: str) -> list[dict]:
    """grpcurl prints one pretty JSON object per message, back to back."""
    decoder, objects, index = json.JSONDecoder(), [], 0
    while index < len(output):
        if output[index].isspace():
            index += 1
            continue
        obj, index = decoder.raw_decode(output, index)
        objects.append(obj)
    return objects


def test_list_shows_every_service(tiny_server):
    result = grpcurl(tiny_server.target, "list")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {
        "zopilot.v1.Generation",
        "zopilot.v1.Documents",
        "inference.GRPCInferenceService",  # KServe v2 / Triton (--protocols)
        "fmaas.GenerationService",  # TGIS
        "vllm.grpc.engine.VllmEngine",  # the gateway worker contract
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_describe_shows_the_documented_contract(tiny_server):
    result = grpcurl(tiny_server.target, "describe", "zopilot.v1.GenerateRequest")
    assert result.returncode == 0, result.stderr
    assert "optional float temperature" in result.stdout
    assert "Unset or 0 = greedy decoding" in result.stdout  # the proto comments reach users
    service = grpcurl(tiny_server.target, "describe", "zopilot.v1.Generation")
    assert "rpc GenerateStream" in service.stdout and "stream .zopilot.v1.GenerateResponse" in (
        service.stdout
    )


def test_health_check(tiny_server):
    result = grpcurl(tiny_server.target, "grpc.health.v1.Health/Check")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_get_model_info(tiny_server):
    result = grpcurl(tiny_server.target, "zopilot.v1.Generation/GetModelInfo")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["architecture"] == "LlamaForCausalLM"
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["eosToken"] == "<|im_end|>" and info["hasChatTemplate"] is True
    assert info["quantization"]["mode"] == "none"
    assert int(info["parameterCount"]) > 0 and int(info["memoryFootprintBytes"]) > 0


def test_stream_and_deadline_examples_from_the_readme(tiny_server):
    stream = grpcurl(
        tiny_server.target,
        "zopilot.v1.Generation/GenerateStream",
        data={"prompt": "Once upon a time", "max_new_tokens": 8, "ignore_eos": True},
    )
    assert stream.returncode == 0, stream.stderr
    chunks = json_stream(stream.stdout)
    assert chunks[-1]["finishReason"] == "FINISH_REASON_LENGTH"
    assert chunks[-1]["usage"]["generatedTokens"] == 8
    # grpcurl's -max-time sets the call deadline: the stream ends with TIME_LIMIT, exit 0
    limited = grpcurl(
        tiny_server.target,
        "zopilot.v1.Generation/GenerateStream",
        data={"prompt": "Once", "max_new_tokens": 2000, "ignore_eos": True},
        flags=("-max-time", "1.0"),
    )
    assert limited.returncode == 0, limited.stderr
    assert json_stream(limited.stdout)[-1]["finishReason"] == "FINISH_REASON_TIME_LIMIT"


def test_invalid_argument_shows_field_violations(tiny_server):
    result = grpcurl(
        tiny_server.target, "zopilot.v1.Generation/Generate", data={"prompt": "x", "top_p": 3}
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert "top_p" in result.stderr


@pytest.mark.parametrize("method", ["Tokenize"])
def test_tokenize(tiny_server, method):
    result = grpcurl(
        tiny_server.target, f"zopilot.v1.Generation/{method}", data={"text": "Hello world"}
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["tokens"] == ["Hello", "Ġworld"]
    assert body["offsets"] == [{"end": 5}, {"start": 5, "end": 11}]
