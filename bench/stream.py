"""Streaming overhead: gRPC GenerateStream vs in-process ``model.generate``, same run.

For each model (the tiny random Llama and/or SmolLM2-135M-Instruct) it starts the real
server in a subprocess, loads the same model in this process, and alternates runs of:

- in-process: ``model.generate`` (greedy, fixed token count) with a minimal streamer that
  only timestamps the first token: the floor any server pays;
- gRPC: ``GenerateStream`` over loopback with the same prompt and parameters, timed at
  the client from the call to the first text chunk and to the last chunk.

It prints JSON with medians and the ratios the targets are stated in:
``tokens_per_s_ratio`` (gRPC / in-process, target >= 0.95) and ``ttft_overhead_ms``
(gRPC minus in-process median TTFT, target <= 10 ms). Machines here are noisy: compare
ratios from the same run, never absolute numbers across runs.

    .venv/bin/python bench/stream.py --models tiny smollm2 --repeats 5
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import grpc  # noqa: E402
from zopilot_client.pb import generation_pb2 as pb  # noqa: E402
from zopilot_client.pb import generation_pb2_grpc  # noqa: E402

# A chat turn, so the first generated token is text (a raw prompt makes SmolLM2-Instruct
# emit <|im_end|> first, which has no text: TTFT would then measure the second token).
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def prompt_ids(tokenizer: Any) -> list[int]:
    """The ids the server builds for ``messages``: template text, no extra special tokens."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


TOKENS = {"tiny": 256, "smollm2": 64}


def model_dirs(names: list[str], cache_dir: Path, work_dir: Path) -> dict[str, Path]:
    from support import build_tiny_llama
    from zopilot_server.generation.loading import default_model

    smollm2 = default_model.ensure_converted(cache_dir)
    dirs = {"smollm2": smollm2}
    if "tiny" in names:
        dirs["tiny"] = build_tiny_llama(smollm2, work_dir / "tiny")
    return {name: dirs[name] for name in names}


class FirstTokenTimer:
    """The cheapest possible streamer: remembers when the first new token arrived."""

    def __init__(self) -> None:
        self.prompt_seen = False
        self.first_at: float | None = None

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
        elif self.first_at is None:
            self.first_at = time.perf_counter()

    def end(self) -> None:
        pass


def in_process_run(model: Any, tokenizer: Any, tokens: int) -> dict[str, float]:
    import torch

    ids = torch.tensor([prompt_ids(tokenizer)])
    timer = FirstTokenTimer()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=tokens,
            eos_token_id=None,  # what the server passes for ignore_eos
            do_sample=False,
            streamer=timer,
            pad_token_id=tokenizer.pad_token_id,
        )
    end = time.perf_counter()
    generated = out.shape[1] - ids.shape[1]
    return {"ttft_ms": (timer.first_at - start) * 1000, "tokens_per_s": generated / (end - start)}


def grpc_run(
    stub: generation_pb2_grpc.GenerationStub, tokens: int, input_tokens: int
) -> dict[str, float]:
    request = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="user", content=PROMPT)],
        max_new_tokens=tokens,
        ignore_eos=True,
    )
    start = time.perf_counter()
    first: float | None = None
    last_chunk = None
    for chunk in stub.GenerateStream(request, timeout=600):
        if first is None and chunk.text:
            first = time.perf_counter()
        last_chunk = chunk
    end = time.perf_counter()
    assert last_chunk is not None and first is not None
    generated = last_chunk.usage.generated_tokens
    assert last_chunk.usage.input_tokens == input_tokens, "both sides must see the same prompt"
    assert generated == tokens, f"expected {tokens} tokens, got {generated}"
    return {"ttft_ms": (first - start) * 1000, "tokens_per_s": generated / (end - start)}


def start_server(
    model_dir: Path, cache_dir: Path, server_args: Sequence[str] = ()
) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "zopilot_server", "--port", "0", "--model", str(model_dir)]
    command += ["--cache-dir", str(cache_dir), *server_args]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    port = None
    for line in process.stdout:
        if match := re.search(r"listening on [\d.]+:(\d+)", line):
            port = match.group(1)
        if "ready: health SERVING" in line:  # not a parser worker's "ready"
            break
    if port is None:
        process.kill()
        raise RuntimeError("server did not start")
    # From here the log is read in the background: a full pipe would block the server's
    # logging calls, stalling its steps mid-benchmark. ``process.log_tail``: the last lines.
    process.log_tail = drain(process)  # type: ignore[attr-defined]
    return process, f"127.0.0.1:{port}"


def gaps_around(
    arrivals: Sequence[Sequence[float]], joined: float, prefilled: float
) -> tuple[list[float], list[float]]:
    """Running streams' inter-token gaps (seconds) before a prompt joined at ``joined``,
    and while it was prefilled until ``prefilled`` (plus half a second for the step that
    was under way): the two sides of a join-stall ratio."""
    steady: list[float] = []
    joining: list[float] = []
    for times in arrivals:
        gaps = list(itertools.pairwise(times))
        steady += [b - a for a, b in gaps if b < joined]
        joining += [b - a for a, b in gaps if a >= joined - 0.001 and b <= prefilled + 0.5]
    return steady, joining


def drain(process: subprocess.Popen[str]) -> deque[str]:
    """Read the server's log in the background; keep the tail."""
    tail: deque[str] = deque(maxlen=40)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line)

    threading.Thread(target=read, daemon=True).start()
    return tail


def bench_model(
    name: str, model_dir: Path, cache_dir: Path, repeats: int, server_args: list[str]
) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokens = TOKENS[name]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    process, target = start_server(model_dir, cache_dir, server_args)
    runs: dict[str, list[dict[str, float]]] = {"in_process": [], "grpc": []}
    try:
        with grpc.insecure_channel(target) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            input_tokens = len(prompt_ids(tokenizer))
            grpc_run(stub, 8, input_tokens)  # warm-up both sides
            in_process_run(model, tokenizer, 8)
            for _ in range(repeats):  # alternate, so drift hits both sides alike
                runs["in_process"].append(in_process_run(model, tokenizer, tokens))
                runs["grpc"].append(grpc_run(stub, tokens, input_tokens))
    finally:
        process.terminate()
        process.wait(30)

    result: dict[str, Any] = {
        "model": name,
        "new_tokens": tokens,
        "repeats": repeats,
        "server_args": server_args,
    }
    result.update(summarise(runs))
    return result


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians per side and the ratios the targets are stated in."""

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    result: dict[str, Any] = {
        "in_process": {k: median("in_process", k) for k in ("tokens_per_s", "ttft_ms")},
        "grpc": {k: median("grpc", k) for k in ("tokens_per_s", "ttft_ms")},
    }
    result["tokens_per_s_ratio"] = (
        result["grpc"]["tokens_per_s"] / result["in_process"]["tokens_per_s"]
    )
    result["ttft_overhead_ms"] = result["grpc"]["ttft_ms"] - result["in_process"]["ttft_ms"]
    result["meets_targets"] = result["tokens_per_s_ratio"] >= 0.95 and (
        result["ttft_overhead_ms"] <= 10
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(TOKENS), default=["tiny", "smollm2"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache-dir", default=str(REPO / ".cache" / "test-models"))
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra server flag, repeatable (e.g. --server-arg=--stream-interval-ms=5)",
    )
    args = parser.parse_args()
    cache_dir = Path(args.cache_dir)
    with tempfile.TemporaryDirectory() as work:
        dirs = model_dirs(args.models, cache_dir, Path(work))
        results = [
            bench_model(n, dirs[n], cache_dir, args.repeats, args.server_arg) for n in args.models
        ]
    print(json.dumps({"benchmark": "stream", "results": results}, indent=2))


if __name__ == "__main__":
    main()
