"""GetModelInfo and Tokenize through the real server."""

from __future__ import annotations

import grpc
import pytest
from zopilot_client.pb import generation_pb2 as pb


def test_model_info_describes_the_tiny_model(tiny_stub, tiny_config):
    info = tiny_stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.model_id == tiny_config.model
    assert info.architecture == "LlamaForCausalLM"
    assert info.dtype == "float32" and info.device == "cpu"
    assert info.quantization.mode == "none"
    assert info.max_context_length == 2048
    assert info.has_chat_template and info.eos_token == "<|im_end|>" and info.eos_token_id == 2
    assert info.vocab_size == 49152
    assert info.default_max_new_tokens == tiny_config.default_max_new_tokens
    assert info.max_new_tokens_limit == tiny_config.max_new_tokens_limit
    # fp32: four bytes per parameter (tied embeddings are counted once)
    assert info.memory_footprint_bytes == pytest.approx(4 * info.parameter_count, rel=0.01)


def test_model_info_of_the_embedded_default(smollm2_stub):
    info = smollm2_stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert info.model_id == "SmolLM2-135M-Instruct"
    assert 134_000_000 < info.parameter_count < 136_000_000
    assert info.max_context_length == 8192 and info.eos_token == "<|im_end|>"


def test_tokenize_ids_tokens_offsets(tiny_stub):
    text = "Hello world, café"
    result = tiny_stub.Tokenize(pb.TokenizeRequest(text=text), timeout=10)
    assert result.token_count == len(result.ids) == len(result.tokens) == len(result.offsets)
    assert "".join(text[o.start : o.end] for o in result.offsets) == text
    assert result.tokens[:2] == ["Hello", "Ġworld"]
    assert not result.truncated


def test_tokenize_truncation_keeps_the_last_tokens(tiny_stub):
    full = tiny_stub.Tokenize(pb.TokenizeRequest(text="a b c d e f g"), timeout=10)
    cut = tiny_stub.Tokenize(pb.TokenizeRequest(text="a b c d e f g", truncate_input_tokens=3))
    assert list(cut.ids) == list(full.ids[-3:]) and cut.truncated
    assert [(o.start, o.end) for o in cut.offsets] == [(o.start, o.end) for o in full.offsets[-3:]]


def test_tokenize_rejects_empty_text(tiny_stub):
    with pytest.raises(grpc.RpcError) as info:
        tiny_stub.Tokenize(pb.TokenizeRequest(text=""), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_tokenize_reports_every_bad_field(tiny_stub):
    from support import field_violations

    with pytest.raises(grpc.RpcError) as info:
        tiny_stub.Tokenize(pb.TokenizeRequest(text="", truncate_input_tokens=-1), timeout=10)
    assert field_violations(info.value) == {
        "text": "is required",
        "truncate_input_tokens": "must be >= 0 (got -1)",
    }
