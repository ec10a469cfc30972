"""LoRA serving cost: 8 concurrent streams, each with one of 4 adapters, vs the same 8
streams on the base model alone, through one real server (a subprocess).

The adapters are made here with peft (random A and B, ``--rank``, on every projection:
q/k/v/o and gate/up/down, the most work an adapter can add) and served with ``--lora``.
Both runs send the same chat prompts, greedy, ``--tokens`` new tokens each (EOS ignored),
alternating ``--repeats`` times so drift hits both; tokens/s is all tokens over the wall
time from the first call to the last chunk (bench/concurrency.py's ``grpc_concurrent``).
The target (issue 29): the adapter run keeps >= 0.8x the base run's tokens/s.

Memory per resident adapter: its weights' bytes (ListAdapters) against the base model's
(GetModelInfo.memory_footprint_bytes).

JSON on stdout: ``benchmark``, ``model``, ``args``, ``base`` and ``lora`` (per run
tokens/s and median TTFT), ``tokens_per_s_ratio`` (median lora over median base),
``target`` ``{ratio, limit, met}``, ``adapter_bytes``, ``base_bytes``,
``adapter_over_base``.

    .venv/bin/python bench/lora.py --model smollm2
    .venv/bin/python bench/lora.py --model tiny --tokens 8 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

import grpc  # noqa: E402
from concurrency import PROMPTS, chat_request, grpc_concurrent  # noqa: E402
from stream import model_dirs, start_server  # noqa: E402
from zopilot_client.pb import generation_pb2 as pb  # noqa: E402
from zopilot_client.pb import generation_pb2_grpc  # noqa: E402

STREAMS = 8
ADAPTERS = 4
TARGET = 0.8
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapters(model_dir: Path, out: Path, count: int, rank: int) -> list[Path]:
    """``count`` peft LoRA adapters on ``model_dir``, random weights, saved under ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    made = []
    for i in range(count):
        torch.manual_seed(i)
        base = AutoModelForCausalLM.from_pretrained(str(model_dir))
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=MODULES, init_lora_weights=False
        )
        path = out / f"adapter{i}"
        get_peft_model(base, config).save_pretrained(str(path))
        made.append(path)
    return made


def ratio_report(base: list[dict[str, Any]], lora: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of both sides' tokens/s, their ratio and the target."""
    base_tps = statistics.median(r["tokens_per_s"] for r in base)
    lora_tps = statistics.median(r["tokens_per_s"] for r in lora)
    ratio = lora_tps / base_tps
    return {
        "tokens_per_s_ratio": ratio,
        "target": {"ratio": ratio, "limit": TARGET, "met": ratio >= TARGET},
    }


def memory_report(stub: Any) -> dict[str, Any]:
    """Each resident adapter's bytes against the base model's."""
    listed = stub.ListAdapters(pb.ListAdaptersRequest())
    base = stub.GetModelInfo(pb.GetModelInfoRequest()).memory_footprint_bytes
    sizes = {a.name: a.bytes for a in listed.adapters}
    return {
        "adapter_bytes": sizes,
        "base_bytes": base,
        "adapter_over_base": {name: size / base for name, size in sizes.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="smollm2")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per side")
    parser.add_argument("--cache-dir", default=str(REPO / ".cache" / "test-models"))
    args = parser.parse_args()
    cache_dir = Path(args.cache_dir)
    with tempfile.TemporaryDirectory() as work:
        model_dir = model_dirs([args.model], cache_dir, Path(work))[args.model]
        adapters = make_adapters(model_dir, Path(work), ADAPTERS, args.rank)
        server_args = ["--max-batch-size", str(STREAMS), "--max-lora-rank", str(args.rank)]
        for i, path in enumerate(adapters):
            server_args += ["--lora", f"adapter{i}={path}"]
        process, target = start_server(model_dir, cache_dir, server_args)
        base_runs, lora_runs = [], []
        try:
            with grpc.insecure_channel(target) as channel:
                stub = generation_pb2_grpc.GenerationStub(channel)
                prompts = PROMPTS[:STREAMS]
                # warm-up, both sides (the first adapter step pays one-time costs)
                grpc_concurrent(stub, [chat_request(p, 4) for p in prompts])
                warm = [
                    chat_request(p, 4, adapter=f"adapter{i % ADAPTERS}")
                    for i, p in enumerate(prompts)
                ]
                grpc_concurrent(stub, warm)
                for _ in range(args.repeats):
                    plain = [chat_request(p, args.tokens) for p in prompts]
                    base_runs.append(grpc_concurrent(stub, plain))
                    mixed = [
                        chat_request(p, args.tokens, adapter=f"adapter{i % ADAPTERS}")
                        for i, p in enumerate(prompts)
                    ]
                    lora_runs.append(grpc_concurrent(stub, mixed))
                    progress = {"base": base_runs[-1], "lora": lora_runs[-1]}
                    print(json.dumps(progress), file=sys.stderr, flush=True)  # one line a repeat
                memory = memory_report(stub)
        finally:
            process.terminate()
            process.wait(30)
    report = {
        "benchmark": "lora",
        "model": args.model,
        "args": {**vars(args), "streams": STREAMS, "adapters": ADAPTERS},
        "server_args": [a.split("=")[0] if a.startswith("adapter") else a for a in server_args],
        "base": base_runs,
        "lora": lora_runs,
        **ratio_report(base_runs, lora_runs),
        **memory,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
