"""GPU figures for bitsandbytes quantization: load time, TTFT, tokens/s and VRAM per mode.

1. Builds a random-weight Llama of realistic size, by default Llama-3-8B's shape in bf16
   (SmolLM2's 49152-token vocabulary instead of 128256, because the server needs a real
   tokenizer and random weights must only produce ids it can decode: 7.5B parameters),
   initialised directly on the GPU: no download.
2. Saves it once as a local model directory (the server loads local directories only,
   and bitsandbytes quantizes while loading, so every mode starts from the same files),
   in /dev/shm when it has room, and frees the GPU again.
3. For each mode (none, 8bit, 4bit) starts the real server in this process
   (``app.start_server``), waits until it has loaded, and over loopback gRPC: one short
   warm-up stream, then ``--repeats`` greedy streams of ``--tokens`` tokens (ignore_eos).
   It reads VRAM from torch.cuda (weights after load, peak while generating) and TTFT /
   tokens per second at the client; the server's own timings are reported next to them.
   Then ``--streams`` N (default 1, 8, 32) streams at once through the batching
   scheduler: aggregate tokens/s and median TTFT per N (VRAM peak covers them too).
4. Prints one JSON object. A mode the environment cannot run (for example 4-bit on a CPU
   with the image's bitsandbytes) is reported with its refusal message, and a mode that
   fails (out of memory, say) with its error, so the other modes' figures still print.

On an H100/H200 the default run takes about 3-5 minutes, mostly saving and loading 15 GB:

    python bench/gpu_quant.py

The CPU smoke mode exercises the same code path with a tiny model (seconds; its numbers
mean nothing). Quantized modes need the quantization env on CPU:

    .venv-quant/bin/python bench/gpu_quant.py --device cpu --tiny
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from zopilot_client.pb import generation_pb2 as pb
from zopilot_client.pb import generation_pb2_grpc
from zopilot_server.app import start_server
from zopilot_server.config import ServerConfig
from zopilot_server.generation.loading import default_model
from zopilot_server.generation.loading.compat import PORTABLE_TOKENIZER_SAVE, dtype_kwarg
from zopilot_server.generation.loading.model_loader import ModelLoadError
from zopilot_server.generation.loading.quantization import QuantizationUnsupported

PROMPT = (
    "Summarise the history of the lighthouse at the harbour entrance, from its first "
    "oil lamp to the automated beacon that replaced its last keeper."
)
# Llama-3-8B's shape (vocabulary aside: see the module docstring).
LLAMA3_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}
TINY = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
MODES = ("none", "8bit", "4bit")
REPO = Path(__file__).resolve().parents[1]
CACHE_HELP = "where the embedded SmolLM2 (for its tokenizer) is converted once, as in the tests"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model: smoke test only")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--tokens", type=int, default=None, help="tokens per stream")
    parser.add_argument("--repeats", type=int, default=2, help="measured streams per mode")
    parser.add_argument(
        "--streams",
        type=int,
        nargs="+",
        default=[1, 8, 32],
        help="concurrent stream counts measured per mode (continuous batching)",
    )
    parser.add_argument("--work-dir", type=Path, help="where the model is saved (default: auto)")
    parser.add_argument(
        "--cache-dir", type=Path, default=REPO / ".cache" / "test-models", help=CACHE_HELP
    )
    args = parser.parse_args(argv)
    if args.tokens is None:
        args.tokens = 8 if args.tiny else 64
    return args


@dataclass
class Built:
    """The saved random model and what building it took."""

    directory: Path
    parameters: int
    build_s: float
    save_s: float


def _gpu(device: str) -> Any:
    """torch.cuda when measuring a GPU, else None (VRAM figures are then null)."""
    import torch

    return torch.cuda if device == "cuda" else None


@contextlib.contextmanager
def work_dir(requested: Path | None, need_bytes: int) -> Iterator[Path]:
    """A scratch directory for the model files: /dev/shm when it has room (fast reloads)."""
    if requested is not None:
        requested.mkdir(parents=True, exist_ok=True)
        yield requested
        return
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and shutil.disk_usage(shm).free > 1.2 * need_bytes else None
    path = Path(tempfile.mkdtemp(prefix="gpu-quant-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def estimated_bytes(shape: dict[str, Any], vocab: int, bytes_per_value: int) -> int:
    """Size of the saved model, to decide where it fits."""
    h, i, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i
    return (n * per_layer + 2 * vocab * h) * bytes_per_value


def build_model(shape: dict[str, Any], device: str, dtype_name: str, out: Path, tok: Any) -> Built:
    """Initialise the random model on ``device`` in ``dtype_name`` and save it to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **shape,
    )
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, **dtype_kwarg(getattr(torch, dtype_name)))
    if device == "cuda":
        torch.cuda.synchronize()
    built = time.perf_counter()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out), **PORTABLE_TOKENIZER_SAVE)
    parameters = int(model.num_parameters())
    del model
    release_memory(device)
    return Built(out, parameters, built - started, time.perf_counter() - built)


def release_memory(device: str) -> None:
    gc.collect()
    if (cuda := _gpu(device)) is not None:
        cuda.empty_cache()


async def stream_once(stub: Any, tokens: int) -> dict[str, float]:
    """One greedy stream of exactly ``tokens`` tokens, timed at the client."""
    request = pb.GenerateRequest(prompt=PROMPT, max_new_tokens=tokens, ignore_eos=True)
    started = time.perf_counter()
    first = last = None
    final = None
    async for chunk in stub.GenerateStream(request, timeout=600):
        now = time.perf_counter()
        if chunk.text and first is None:
            first = now
        last = now
        final = chunk
    assert final is not None and first is not None and last is not None
    generated = final.usage.generated_tokens
    return {
        "ttft_ms": (first - started) * 1000,
        # Decoding rate after the first token: the prefill is TTFT's business.
        "tokens_per_s": (generated - 1) / (last - first) if last > first else float("nan"),
        "generated_tokens": generated,
        "server_ttft_ms": final.timings.time_to_first_token_ms,
        "server_tokens_per_s": final.timings.tokens_per_second,
    }


async def concurrent_streams(stub: Any, n: int, tokens: int) -> dict[str, float]:
    """``n`` streams started together: aggregate tokens/s over the batch, median TTFT."""
    started = time.perf_counter()
    runs = await asyncio.gather(*(stream_once(stub, tokens) for _ in range(n)))
    elapsed = time.perf_counter() - started
    return {
        "streams": n,
        "aggregate_tokens_per_s": round(sum(r["generated_tokens"] for r in runs) / elapsed, 2),
        "ttft_median_ms": round(statistics.median(r["ttft_ms"] for r in runs), 2),
    }


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(run[key] for run in runs), 2) for key in runs[0]}


async def measure_mode(mode: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Start the server on the saved model in ``mode``, stream, read VRAM, stop."""
    cuda = _gpu(args.device)
    release_memory(args.device)
    if cuda is not None:
        cuda.reset_peak_memory_stats()
    before = cuda.memory_allocated() if cuda is not None else 0
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        model=str(model_dir),
        device=args.device,
        dtype="bfloat16" if args.device == "cuda" else "float32",
        quantize=mode,
        doc_workers=1,  # the document parser is not measured here
        max_batch_size=max(args.streams),
        max_queue=max(args.streams),
        max_batch_tokens=max(32768, max(args.streams) * (args.tokens + 64)),
    )
    started = time.perf_counter()
    running = await start_server(config)
    try:
        assert running.load_task is not None
        await running.load_task
        ready_s = time.perf_counter() - started
        weights = cuda.memory_allocated() - before if cuda is not None else None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
            await stream_once(stub, 4)  # warm-up: kernels, allocator, caches
            runs = [await stream_once(stub, args.tokens) for _ in range(args.repeats)]
            concurrency = [await concurrent_streams(stub, n, args.tokens) for n in args.streams]
        peak = cuda.max_memory_allocated() - before if cuda is not None else None
    except (QuantizationUnsupported, ModelLoadError) as exc:
        return {"mode": mode, "refused": str(exc)}
    except (RuntimeError, grpc.RpcError) as exc:  # e.g. CUDA out of memory: keep the others
        return {"mode": mode, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        await running.stop(0)
        running.generation.engine = None  # drop the last reference to the model
        del running
        release_memory(args.device)
    return {
        "mode": mode,
        "quantization": info.quantization.mode,
        "load_s": round(info.load_seconds, 2),
        "ready_s": round(ready_s, 2),
        "memory_footprint_bytes": info.memory_footprint_bytes,
        "vram_weights_bytes": weights,
        "vram_peak_bytes": peak,
        **median_of(runs),
        "concurrency": concurrency,
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for dist in ("torch", "transformers", "bitsandbytes", "accelerate"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


@dataclass
class Setup:
    """What a GPU bench starts from: the tokenizer, the model shape and the report so far."""

    tokenizer: Any
    shape: dict[str, Any]
    dtype_name: str
    size: int
    report: dict[str, Any]


def setup(args: argparse.Namespace) -> Setup:
    """Check the device, load SmolLM2's tokenizer, pick the shape (gpu_e2e.py too)."""
    from transformers import AutoTokenizer

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU visible: use --device cpu --tiny for the smoke mode")
    tokenizer = AutoTokenizer.from_pretrained(str(default_model.ensure_converted(args.cache_dir)))
    shape = TINY if args.tiny else LLAMA3_8B
    dtype_name = "bfloat16" if args.device == "cuda" else "float32"
    size = estimated_bytes(shape, len(tokenizer), 2 if dtype_name == "bfloat16" else 4)
    report: dict[str, Any] = {"device": args.device, "versions": versions()}
    if (cuda := _gpu(args.device)) is not None:
        report["gpu"] = cuda.get_device_name(0)
    return Setup(tokenizer, shape, dtype_name, size, report)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    ready = setup(args)
    tokenizer, shape, dtype_name, size, report = (
        ready.tokenizer, ready.shape, ready.dtype_name, ready.size, ready.report
    )  # fmt: skip
    with work_dir(args.work_dir, size) as scratch:
        built = build_model(shape, args.device, dtype_name, scratch / "model", tokenizer)
        report["model"] = {
            "shape": "tiny" if args.tiny else "llama-3-8b (vocab 49152)",
            "parameters": built.parameters,
            "dtype": dtype_name,
            "build_s": round(built.build_s, 2),
            "save_s": round(built.save_s, 2),
            "saved_in": str(scratch),
        }
        report["request"] = {"tokens": args.tokens, "repeats": args.repeats, "greedy": True}
        report["modes"] = [await measure_mode(mode, built.directory, args) for mode in args.modes]
    return report


def print_report(run: Callable[[argparse.Namespace], Awaitable[dict[str, Any]]], args: Any) -> None:
    """Run a GPU bench's ``main_async`` and print its report as JSON (gpu_e2e.py too)."""
    started = time.perf_counter()
    report = asyncio.run(run(args))
    report["total_s"] = round(time.perf_counter() - started, 1)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


def main(argv: list[str] | None = None) -> None:
    print_report(main_async, parse_args(argv))


if __name__ == "__main__":
    main()
