"""Bad requests and failures: the right status, rich details, and the server keeps serving."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
import torch
from support import assert_generates, field_violations
from zopilot_client.pb import generation_pb2 as pb


def error_of(call, request, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call(request, timeout=30, **kwargs)
        if not isinstance(result, pb.GenerateResponse):
            list(result)
    return info.value


@pytest.mark.parametrize(
    ("fields", "field", "needle"),
    [
        ({}, "prompt", "set prompt or messages"),
        (
            {"prompt": "x", "messages": [pb.ChatMessage(role="user", content="y")]},
            "prompt",
            "not both",
        ),
        ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens", "[1, 4096]"),
        ({"prompt": "x", "max_new_tokens": 5000}, "max_new_tokens", "got 5000"),
        ({"prompt": "x", "min_new_tokens": -1}, "min_new_tokens", "got -1"),
        ({"prompt": "x", "temperature": -0.5}, "temperature", "got -0.5"),
        ({"prompt": "x", "temperature": float("nan")}, "temperature", "got nan"),
        ({"prompt": "x", "top_p": 0.0}, "top_p", "(0, 1]"),
        ({"prompt": "x", "top_p": 1.5}, "top_p", "(0, 1]"),
        ({"prompt": "x", "top_k": -3}, "top_k", "got -3"),
        ({"prompt": "x", "repetition_penalty": 0.0}, "repetition_penalty", "[0.01, 10]"),
        ({"prompt": "x", "stop_sequences": ["a", ""]}, "stop_sequences", "empty string (index 1)"),
        ({"prompt": "x", "stop_sequences": ["s"] * 9}, "stop_sequences", "at most 8"),
        ({"prompt": "x", "stop_sequences": ["s" * 300]}, "stop_sequences", "longer than 256"),
        ({"prompt": "x", "truncate_input_tokens": -1}, "truncate_input_tokens", "got -1"),
        ({"prompt": "x", "time_limit_ms": -5}, "time_limit_ms", "got -5"),
        ({"prompt": "x", "top_n_tokens": 11}, "top_n_tokens", "[0, 10]"),
        ({"messages": [pb.ChatMessage(role="", content="y")]}, "messages[0].role", "empty"),
    ],
)
def test_invalid_fields_get_bad_request_details(tiny_stub, fields, field, needle):
    for call in (tiny_stub.Generate, tiny_stub.GenerateStream):
        error = error_of(call, pb.GenerateRequest(**fields))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        violations = field_violations(error)
        assert field in violations, violations
        assert needle in violations[field]


def test_all_violations_are_reported_at_once(tiny_stub):
    error = error_of(
        tiny_stub.Generate, pb.GenerateRequest(prompt="x", top_p=2.0, top_k=-1, max_new_tokens=0)
    )
    assert set(field_violations(error)) == {"top_p", "top_k", "max_new_tokens"}


def test_prompt_longer_than_context_needs_truncation(tiny_stub):
    long_prompt = "hello " * 2100  # the tiny model's context is 2048 tokens
    error = error_of(tiny_stub.Generate, pb.GenerateRequest(prompt=long_prompt, max_new_tokens=4))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds the model context of 2048" in field_violations(error)["prompt"]
    ok = tiny_stub.Generate(
        pb.GenerateRequest(prompt=long_prompt, max_new_tokens=4, truncate_input_tokens=1000)
    )
    assert ok.usage.input_tokens == 1000 and ok.usage.input_truncated


@pytest.fixture(scope="module")
def no_template_model_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """The tiny model with the chat template removed from its tokenizer config."""
    import shutil

    target = tmp_path_factory.mktemp("no-template") / "model"
    shutil.copytree(tiny_model_dir, target)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    (target / "chat_template.jinja").unlink(missing_ok=True)
    (target / "chat_template.json").unlink(missing_ok=True)
    return target


def test_messages_without_chat_template(make_server, no_template_model_dir):
    server = make_server(model=str(no_template_model_dir))
    with server.channel() as channel:
        stub = pb_stub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest())
        assert not info.has_chat_template
        error = error_of(
            stub.Generate, pb.GenerateRequest(messages=[pb.ChatMessage(role="user", content="hi")])
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no chat template" in field_violations(error)["messages"]
        assert_generates(stub)


def pb_stub(channel):
    from zopilot_client.pb import generation_pb2_grpc

    return generation_pb2_grpc.GenerationStub(channel)


def _break_forward(server, exc: BaseException):
    """Every model forward raises ``exc``: the decoder stack that both the packed step
    and the serial path run through."""
    model = server.running.engine.loaded.model.base_model
    original = model.forward

    def failing(*args, **kwargs):
        raise exc

    model.forward = failing
    return lambda: setattr(model, "forward", original)


def test_exception_in_generate_is_internal_and_never_hangs(make_server, caplog):
    server = make_server()
    restore = _break_forward(server, RuntimeError("boom in forward"))
    with server.channel() as channel:
        stub = pb_stub(channel)
        request = pb.GenerateRequest(prompt="hi", max_new_tokens=5, request_id="req-boom")
        for call in (stub.GenerateStream, stub.Generate):
            error = error_of(call, request)
            assert error.code() == grpc.StatusCode.INTERNAL
            assert "req-boom" in error.details()
        assert "req-boom" in caplog.text and "boom in forward" in caplog.text
        restore()
        assert_generates(stub)


def test_out_of_memory_is_resource_exhausted(make_server):
    server = make_server()
    restore = _break_forward(
        server, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate")
    )
    with server.channel() as channel:
        stub = pb_stub(channel)
        error = error_of(stub.GenerateStream, pb.GenerateRequest(prompt="hi", max_new_tokens=5))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "out of memory" in error.details()
        restore()
        assert_generates(stub)


def test_api_key_is_required_when_configured(make_server):
    from grpc_health.v1 import health_pb2

    server = make_server(api_key="s3cret")
    with server.channel() as channel:
        stub = pb_stub(channel)
        request = pb.GenerateRequest(prompt="hi", max_new_tokens=2)
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            for call in (stub.Generate, stub.GenerateStream, stub.GetModelInfo):
                req = pb.GetModelInfoRequest() if call is stub.GetModelInfo else request
                error = error_of(call, req, metadata=metadata)
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub.Generate(request, metadata=(("authorization", "Bearer s3cret"),))
        assert ok.usage.generated_tokens == 2 or ok.finish_reason == pb.FINISH_REASON_EOS_TOKEN
    assert server.health() == health_pb2.HealthCheckResponse.SERVING  # probes need no key


def test_status_table_lists_every_subclass_before_its_base():
    """isinstance picks the first match: a base listed earlier would shadow its subclass."""
    from zopilot_server.error_table import STATUS_TABLE

    classes = [exc_type for exc_type, _ in STATUS_TABLE]
    for i, earlier in enumerate(classes):
        for later in classes[i + 1 :]:
            assert not issubclass(later, earlier), f"{later.__name__} is shadowed by {earlier}"


def test_generation_failures_map_by_class():
    from zopilot_server.error_table import to_service_error
    from zopilot_server.generation.domain import GenerationFailed, OutOfMemory

    oom = GenerationFailed("req-1", torch.OutOfMemoryError("CUDA out of memory"))
    assert type(oom) is OutOfMemory and oom.request_id == "req-1"
    assert to_service_error(oom).code == grpc.StatusCode.RESOURCE_EXHAUSTED
    bug = GenerationFailed("req-2", RuntimeError("boom"))
    assert type(bug) is GenerationFailed
    internal = to_service_error(bug, "ignored")
    assert internal.code == grpc.StatusCode.INTERNAL
    assert "req-2" in internal.message and "boom" not in internal.message
