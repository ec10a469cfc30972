"""Models the tests build: random-weight configs of other architectures and random LoRA
adapters (the tiny Llama itself is support.build_tiny_llama)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_architecture_config(name: str, tokenizer: Any) -> Any:
    """A two-layer random-weight config of architecture ``name`` on ``tokenizer``'s vocabulary:
    qwen2, mistral (a sliding window shorter than test prompts), phi3, gpt2, gpt_neox."""
    import transformers

    common = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    llama_like = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        **common,
    )
    if name == "qwen2":
        return transformers.Qwen2Config(**llama_like)
    if name == "mistral":  # a window shorter than the prompts: the mask must apply it
        return transformers.MistralConfig(sliding_window=24, **llama_like)
    if name == "phi3":
        return transformers.Phi3Config(**llama_like)
    if name == "gpt2":
        return transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=1024, **common)
    if name == "gpt_neox":
        return transformers.GPTNeoXConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=1024,
            **common,
        )
    raise AssertionError(name)


def make_adapter(base_dir: Path, out: Path, *, rank: int, targets: list[str], seed: int) -> Path:
    """A peft LoRA adapter with random A and B (init_lora_weights=False) saved in ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False
    )
    get_peft_model(base, config).save_pretrained(str(out))
    return out
