"""The embedded model's one-time conversion: atomic, locked, cleaning up after crashes."""

from __future__ import annotations

from pathlib import Path

import pytest
from zopilot_server.generation.loading import default_model


def fake_convert(calls: list[Path]):
    def convert(source: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")

    return convert


def test_converts_once_and_removes_leftovers_of_an_interrupted_run(tmp_path, monkeypatch):
    calls: list[Path] = []
    monkeypatch.setattr(default_model, "_convert", fake_convert(calls))
    leftover = tmp_path / ".convert-interrupted"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half written")

    target = default_model.ensure_converted(tmp_path)
    assert (target / "config.json").is_file()
    assert not leftover.exists()
    assert default_model.ensure_converted(tmp_path) == target
    assert len(calls) == 1, "a converted model is reused"


def test_a_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    def failing(source: Path, out_dir: Path) -> None:
        (out_dir / "partial").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(default_model, "_convert", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        default_model.ensure_converted(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".convert.lock"]


def test_the_embedded_model_is_fixed_up(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    assert tokenizer.eos_token == "<|im_end|>"
    assert (
        tokenizer("Hello")["input_ids"] == tokenizer("Hello", add_special_tokens=False)["input_ids"]
    ), "SmolLM2 adds no BOS"
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_a_gguf_file_is_served_with_its_lm_head_tied(make_server):
    """--model FILE.gguf: transformers 4.45 leaves a tied model's lm_head random; the loader
    ties it, so the real SmolLM2 GGUF answers correctly (about 15 s: dequantization)."""
    from zopilot_client.pb import generation_pb2 as pb
    from zopilot_client.pb import generation_pb2_grpc

    server = make_server(model=str(default_model.gguf_path()))
    with server.channel() as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert info.model_id.endswith(".gguf") and info.architecture == "LlamaForCausalLM"
        question = [pb.ChatMessage(role="user", content="What is the capital of France?")]
        answer = stub.Generate(pb.GenerateRequest(messages=question, max_new_tokens=20))
    assert "Paris" in answer.text
