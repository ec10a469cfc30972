"""LoRA adapters on bitsandbytes bases (QLoRA serving), on CPU for real: a 4-bit and an
8-bit tiny Llama served with an adapter give the same greedy tokens as peft's own model
(``PeftModel`` with its bitsandbytes LoRA layers) with that adapter on the same base."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from support import InProcessServer, greedy_tokens
from zopilot_client.pb import generation_pb2 as pb
from zopilot_client.pb import generation_pb2_grpc
from zopilot_server.config import ServerConfig
from zopilot_server.generation.loading.model_loader import load_model

PROMPT = "The old lighthouse keeper wrote"
N = 10
MODES = {
    "4bit-nf4": {"quantize": "4bit", "bnb_4bit_quant_type": "nf4"},
    "8bit": {"quantize": "8bit"},
}


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on every projection, random A and B (so the text changes)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        init_lora_weights=False,
    )
    out = tmp_path_factory.mktemp("qlora") / "alpha"
    get_peft_model(base, config).save_pretrained(str(out))
    return out


def peft_greedy(config: ServerConfig, adapter: Path | None, ids: list[int]) -> list[int]:
    """peft's own model: the same quantized base (our loader, the server's settings) with
    ``adapter`` applied by peft's bitsandbytes LoRA layers, greedy."""
    from peft import PeftModel

    model = load_model(config).model
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return greedy_tokens(model, ids, N)


@pytest.fixture(scope="module", params=sorted(MODES))
def served(
    request: pytest.FixtureRequest, tiny_model_dir: Path, model_cache_dir: Path, adapter_dir: Path
) -> Iterator[tuple[ServerConfig, dict[str, list[int]], list[int]]]:
    """One quantized server with the adapter: its tokens with and without it."""
    config = ServerConfig(
        model=str(tiny_model_dir), cache_dir=str(model_cache_dir), **MODES[request.param]
    )
    server = InProcessServer(dataclasses.replace(config, lora=(f"alpha={adapter_dir}",)))
    try:
        with server.channel() as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            ids = list(stub.Tokenize(pb.TokenizeRequest(text=PROMPT)).ids)
            got = {}
            for name in ("alpha", ""):
                message = pb.GenerateRequest(
                    prompt=PROMPT,
                    adapter=name,
                    max_new_tokens=N,
                    min_new_tokens=N,
                    return_token_details=True,
                )
                got[name] = [t.id for t in stub.Generate(message, timeout=120).tokens]
            info = stub.GetModelInfo(pb.GetModelInfoRequest())
            assert info.quantization.mode == MODES[request.param]["quantize"]
            assert [a.name for a in info.adapters] == ["alpha"]
    finally:
        server.stop()
    yield config, got, ids


def test_quantized_base_with_adapter_equals_peft(
    served: tuple[ServerConfig, dict[str, list[int]], list[int]], adapter_dir: Path
) -> None:
    config, got, ids = served
    assert got["alpha"] != got[""], "the adapter must change the text"
    assert got["alpha"] == peft_greedy(config, adapter_dir, ids)
    assert got[""] == peft_greedy(config, None, ids)
