"""End to end on a GPU: the KV arena serving bf16, 8-bit and 4-bit against in-process generate.

Prepared for the sessions that are lent a GPU (run it once and paste the JSON into the
table in docs/benchmarks.md). For each mode (none = bf16, 8bit, 4bit) on a random-weight
model of Llama-3-8B's shape (bench/gpu_quant.py builds and saves it once):

1. in process: the model loaded as the server loads it, ``generate`` over N prompts of
   different lengths as one left-padded batch (greedy, fixed new tokens): tokens/s;
2. the real server in this process: N concurrent streams of the same prompts through the
   continuous-batching scheduler and the arena: aggregate tokens/s, median TTFT, the
   arena's size (GetModelInfo.kv_cache) and the GPU memory peak;
3. the ratio of the two per N (issue "KV arena": >= 1.0 at N = 8 and 16+);
4. a long prompt (half a slot, at most ~6000 tokens) joining 4 decoding streams: its TTFT
   and the streams' worst inter-token gap while it is prefilled over their steady median
   (the packed step: at most ``--max-step-stall``, default 2).

Then the out-of-memory drill (bf16 only): a server whose arena takes 0.99 of the free
memory, so activations have almost no room, gets long prompts together with short ones;
every call must end OK or RESOURCE_EXHAUSTED (never INTERNAL or a hang), the next request
must succeed and health must still say SERVING.

    python bench/gpu_e2e.py                       # the GPU run (about 5-10 minutes)
    python bench/gpu_e2e.py --device cpu --tiny   # the CPU smoke of the same code path
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import grpc  # noqa: E402
from gpu_quant import (  # noqa: E402
    MODES,
    PROMPT,
    _gpu,
    build_model,
    print_report,
    release_memory,
    setup,
    work_dir,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from stream import gaps_around  # noqa: E402
from zopilot_client.pb import generation_pb2 as pb  # noqa: E402
from zopilot_client.pb import generation_pb2_grpc  # noqa: E402
from zopilot_server.app import start_server  # noqa: E402
from zopilot_server.config import ServerConfig  # noqa: E402
from zopilot_server.generation.loading.model_loader import load_model  # noqa: E402


def prompts(n: int, scale: int) -> list[str]:
    """N prompts of different lengths: the base prompt repeated 1..4 (x scale) times."""
    return [" ".join([PROMPT] * (1 + (i % 4) * scale)) for i in range(n)]


# Streams decoding while the long prompt joins (long_prompt_joins).
JOIN_STREAMS = 4


def config_for(args: argparse.Namespace, model_dir: Path, mode: str, **extra: Any) -> ServerConfig:
    return ServerConfig(
        host="127.0.0.1",
        port=0,
        model=str(model_dir),
        device=args.device,
        dtype="bfloat16" if args.device == "cuda" else "float32",
        quantize=mode,
        doc_workers=1,
        max_batch_size=max(*args.streams, JOIN_STREAMS + 1),  # the join needs a free slot
        max_queue=4 * max(args.streams),
        **extra,
    )


def in_process(args: argparse.Namespace, model_dir: Path, mode: str) -> dict[int, float]:
    """tokens/s of ``generate`` over each N's prompts as one left-padded batch."""
    import torch

    loaded = load_model(config_for(args, model_dir, mode))
    tokenizer, model = loaded.tokenizer, loaded.model
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out: dict[int, float] = {}
    try:
        for n in args.streams:
            batch = tokenizer(prompts(n, args.scale), return_tensors="pt", padding=True)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            with torch.inference_mode():
                model.generate(**batch, max_new_tokens=2, do_sample=False)  # warm-up
                started = time.perf_counter()
                model.generate(
                    **batch,
                    max_new_tokens=args.tokens,
                    min_new_tokens=args.tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
                if (cuda := _gpu(args.device)) is not None:
                    cuda.synchronize()
            out[n] = round(n * args.tokens / (time.perf_counter() - started), 2)
    finally:
        del model, loaded
        release_memory(args.device)
    return out


async def stream(stub: Any, prompt: str, tokens: int) -> dict[str, Any]:
    request = pb.GenerateRequest(prompt=prompt, max_new_tokens=tokens, ignore_eos=True)
    started = time.perf_counter()
    arrivals: list[float] = []
    final = None
    async for chunk in stub.GenerateStream(request, timeout=900):
        if chunk.text:
            arrivals.append(time.perf_counter())
        final = chunk
    assert final is not None and arrivals
    return {
        "ttft_ms": (arrivals[0] - started) * 1000,
        "tokens": final.usage.generated_tokens,
        "arrivals": arrivals,
    }


async def long_prompt_joins(stub: Any, args: argparse.Namespace, tokens: int) -> dict[str, Any]:
    """Four streams decode; a prompt of about ``tokens`` tokens (PROMPT is ~32) joins:
    its TTFT, and the running streams' worst gap while it is prefilled against their
    steady median (the packed step keeps that within --max-step-stall, default 2)."""
    length = max(4 * args.tokens, 256)  # long enough to outlast the join
    running = [asyncio.create_task(stream(stub, p, length)) for p in prompts(JOIN_STREAMS, 1)]
    await asyncio.sleep(2.0 if args.device == "cuda" else 0.3)  # steady decoding
    joined = time.perf_counter()
    long_run = await stream(stub, " ".join([PROMPT] * max(1, tokens // 32)), 1)
    prefilled = time.perf_counter()
    runs = await asyncio.gather(*running)
    steady, during = gaps_around([run["arrivals"] for run in runs], joined, prefilled)
    if not steady or not during:  # the streams ended first: nothing to compare (JSON null)
        return {"long_prompt_ttft_ms": round(long_run["ttft_ms"], 1), "itl_join_ratio": None}
    steady_ms = statistics.median(steady) * 1000
    worst_ms = max(during) * 1000
    return {
        "long_prompt_ttft_ms": round(long_run["ttft_ms"], 1),
        "steady_itl_ms": round(steady_ms, 1),
        "max_itl_during_join_ms": round(worst_ms, 1),
        "itl_join_ratio": round(worst_ms / steady_ms, 3),
    }


@contextlib.asynccontextmanager
async def serving(
    args: argparse.Namespace, config: ServerConfig
) -> AsyncIterator[grpc.aio.Channel]:
    """The real server in this process, loaded, and a channel to it; stopped and its
    memory handed back afterwards."""
    running = await start_server(config)
    try:
        assert running.load_task is not None
        await running.load_task
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield channel
    finally:
        await running.stop(0)
        running.generation.engine = None
        del running
        release_memory(args.device)


async def served(args: argparse.Namespace, model_dir: Path, mode: str) -> dict[str, Any]:
    cuda = _gpu(args.device)
    if cuda is not None:
        cuda.reset_peak_memory_stats()
    async with serving(args, config_for(args, model_dir, mode)) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        await stream(stub, PROMPT, 4)  # warm-up
        by_n = {}
        for n in args.streams:
            started = time.perf_counter()
            runs = await asyncio.gather(
                *(stream(stub, p, args.tokens) for p in prompts(n, args.scale))
            )
            elapsed = time.perf_counter() - started
            by_n[n] = {
                "tokens_per_s": round(sum(r["tokens"] for r in runs) / elapsed, 2),
                "ttft_median_ms": round(statistics.median(r["ttft_ms"] for r in runs), 1),
            }
        join = await long_prompt_joins(stub, args, min(6000, info.kv_cache.tokens_per_slot // 2))
        peak = cuda.max_memory_allocated() if cuda is not None else None
    return {
        "join": join,
        "kv_cache": {
            "mode": info.kv_cache.mode,
            "packed_step": info.kv_cache.packed_step,
            "slots": info.kv_cache.slots,
            "tokens_per_slot": info.kv_cache.tokens_per_slot,
            "bytes": info.kv_cache.bytes,
        },
        "memory_peak_bytes": peak,
        "streams": by_n,
    }


async def oom_drill(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    """Long prompts beside short ones with almost no memory left for activations."""
    config = config_for(args, model_dir, "none", kv_cache_memory_fraction=0.99)
    outcomes: dict[str, int] = {}
    async with serving(args, config) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        long_prompt = " ".join([PROMPT] * (info.kv_cache.tokens_per_slot // 40))

        async def call(prompt: str) -> str:
            try:
                await stream(stub, prompt, 16)
                return "OK"
            except grpc.aio.AioRpcError as error:
                return error.code().name

        results = await asyncio.gather(*(call(p) for p in [long_prompt] * 4 + [PROMPT] * 4))
        for result in results:
            outcomes[result] = outcomes.get(result, 0) + 1
        after = await call(PROMPT)
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    return {
        "outcomes": outcomes,
        "next_request": after,
        "health": health_pb2.HealthCheckResponse.ServingStatus.Name(status.status),
        "passed": set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED"}
        and after == "OK"
        and status.status == health_pb2.HealthCheckResponse.SERVING,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    ready = setup(args)
    report = ready.report
    with work_dir(args.work_dir, ready.size) as scratch:
        model_dir = scratch / "model"
        built = build_model(ready.shape, args.device, ready.dtype_name, model_dir, ready.tokenizer)
        report["model"] = {
            "shape": "tiny" if args.tiny else "llama-3-8b",
            "dtype": ready.dtype_name,
        }
        report["modes"] = []
        for mode in args.modes:
            entry: dict[str, Any] = {"mode": mode}
            try:
                local = in_process(args, built.directory, mode)
                remote = await served(args, built.directory, mode)
            except Exception as exc:  # noqa: BLE001 - a refused or failed mode; keep the others
                entry["error"] = f"{type(exc).__name__}: {exc}"
            else:
                entry.update(remote)
                entry["in_process_tokens_per_s"] = local
                entry["ratio"] = {
                    n: round(remote["streams"][n]["tokens_per_s"] / local[n], 3) for n in local
                }
            report["modes"].append(entry)
        if args.device == "cuda" and not args.skip_oom:
            report["oom_drill"] = await oom_drill(args, built.directory)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model: smoke test only")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--tokens", type=int, default=None, help="new tokens per stream")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--scale", type=int, default=8, help="prompt length spread")
    parser.add_argument("--skip-oom", action="store_true", help="skip the out-of-memory drill")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "test-models")
    args = parser.parse_args(argv)
    if args.tokens is None:
        args.tokens = 8 if args.tiny else 128
    return args


def main(argv: list[str] | None = None) -> None:
    print_report(main_async, parse_args(argv))


if __name__ == "__main__":
    main()
