"""Serving as users load it: Poisson arrivals over four workloads, prefix reuse on vs off.

Each workload sends ``--requests`` GenerateStream calls to the real server (a subprocess)
with exponentially distributed gaps (``--rate`` per second, fixed seed), greedy,
``--tokens`` new tokens each (EOS ignored), and reports output tokens/s (all tokens over
the wall time from the first arrival to the last chunk), TTFT p50/p90, inter-token
p50/p99 and the share of prompt tokens served from the prefix cache:

- ``chats``: independent short chats (~75 prompt tokens);
- ``system``: one ~700-word system prompt, then each user's own question (~840);
- ``multiturn``: four conversations of four turns, the history re-sent every turn and the
  next turn sent when the answer arrived (~530 by the last turn);
- ``document``: four ~1,500-word documents, four questions on each (~1,750).

Every workload runs against a server with ``--prefix-cache on`` and one with ``off`` in
the same sitting; ratios compare the two (issue "Prefix reuse" targets: system-prompt and
later-turn median TTFT <= 2.5x the chats'; system-prompt tokens/s >= 0.6x the chats';
document TTFT p50 <= 0.3x reuse-off; nothing slower than reuse-off beyond noise).

    .venv/bin/python bench/serving.py --model smollm2
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

import grpc  # noqa: E402
from stream import model_dirs, start_server  # noqa: E402
from zopilot_client.pb import generation_pb2 as pb  # noqa: E402
from zopilot_client.pb import generation_pb2_grpc  # noqa: E402

TOPICS = [
    "harbour cranes", "tidal charts", "container seals", "customs forms", "cold chains",
    "river barges", "pilot boats", "bill of lading", "berth schedules", "fuel bunkering",
    "dry docks", "lighthouses", "reefer plugs", "port fees", "ballast water", "tug boats",
]  # fmt: skip

SENTENCES = [
    "The port authority publishes berth windows every morning at six.",
    "Reefer containers must stay plugged in while they wait on the quay.",
    "Pilots board inbound vessels two miles before the breakwater.",
    "Customs inspections are planned a day ahead from the manifest.",
    "Tug assistance is mandatory for ships longer than two hundred metres.",
    "Dangerous goods are stowed apart and declared with their class.",
    "Tidal windows decide when the deepest ships may enter the river.",
    "Every crane movement is logged with the container number and time.",
]


def words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        out += rng.choice(SENTENCES).split()
    return " ".join(out[:n])


def msg(role: str, content: str) -> pb.ChatMessage:
    return pb.ChatMessage(role=role, content=content)


class Workload:
    """Requests to send; ``follow_up`` makes a conversation's next turn from its answer."""

    def __init__(self, name: str, first: list[list[pb.ChatMessage]]) -> None:
        self.name = name
        self.first = first
        self.follow_up: Callable[[int, list[pb.ChatMessage], str], list | None] | None = None


def workloads(requests: int) -> list[Workload]:
    chats = Workload(
        "chats",
        [[msg("user", f"Tell me one fact about {TOPICS[i % 16]}.")] for i in range(requests)],
    )
    system_prompt = "You are the assistant of a large port. " + words(700, 1)
    system = Workload(
        "system",
        [
            [msg("system", system_prompt), msg("user", f"What about {TOPICS[i % 16]}?")]
            for i in range(requests)
        ],
    )
    conversations = max(1, requests // 4)
    multiturn = Workload(
        "multiturn",
        [
            [msg("system", words(250, 10 + i)), msg("user", f"Explain {TOPICS[i % 16]}.")]
            for i in range(conversations)
        ],
    )
    questions = ["Summarise it.", "Who boards ships?", "What is logged?", "When do ships enter?"]

    def next_turn(index: int, history: list[pb.ChatMessage], answer: str) -> list | None:
        turn = sum(m.role == "user" for m in history)
        if turn >= 4:
            return None
        return [*history, msg("assistant", answer), msg("user", questions[turn % 4])]

    multiturn.follow_up = next_turn
    documents = max(1, requests // 4)
    document = Workload(
        "document",
        [
            [msg("user", f"Document:\n{words(1500, 100 + d)}\n\nQuestion: {questions[q]}")]
            for d in range(documents)
            for q in range(4)
        ],
    )
    return [chats, system, multiturn, document]


def stream(stub: Any, messages: list, tokens: int) -> dict[str, Any]:
    request = pb.GenerateRequest(messages=messages, max_new_tokens=tokens, ignore_eos=True)
    began = time.perf_counter()
    arrivals: list[float] = []
    text, last = [], None
    for chunk in stub.GenerateStream(request, timeout=1800):
        if chunk.text:
            arrivals.append(time.perf_counter())
            text.append(chunk.text)
        last = chunk
    assert last is not None and last.usage.generated_tokens == tokens
    return {
        "began": began,
        "arrivals": arrivals,
        "text": "".join(text),
        "input_tokens": last.usage.input_tokens,
        "cached_tokens": last.usage.cached_input_tokens,
    }


def run_workload(stub: Any, load: Workload, rate: float, tokens: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def conversation(index: int, messages: list) -> None:
        while messages is not None:
            result = stream(stub, messages, tokens)
            with lock:
                results.append(result)
            if load.follow_up is None:
                return
            messages = load.follow_up(index, messages, result["text"])

    threads = []
    for index, messages in enumerate(load.first):
        thread = threading.Thread(target=conversation, args=(index, messages))
        thread.start()
        threads.append(thread)
        time.sleep(rng.expovariate(rate))
    for thread in threads:
        thread.join()
    return summarise(results, tokens)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(results: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
    ttft = [r["arrivals"][0] - r["began"] for r in results]
    itl = [b - a for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:], strict=False)]
    wall = max(r["arrivals"][-1] for r in results) - min(r["began"] for r in results)
    prompt = sum(r["input_tokens"] for r in results)
    return {
        "requests": len(results),
        "prompt_tokens_mean": round(prompt / len(results)),
        "output_tokens_per_s": round(tokens * len(results) / wall, 2),
        "ttft_p50_s": round(percentile(ttft, 0.5), 3),
        "ttft_p90_s": round(percentile(ttft, 0.9), 3),
        "itl_p50_ms": round(percentile(itl, 0.5) * 1000, 1),
        "itl_p99_ms": round(percentile(itl, 0.99) * 1000, 1),
        "cache_hit_rate": round(sum(r["cached_tokens"] for r in results) / prompt, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="smollm2")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--rate", type=float, default=1.0, help="arrivals per second")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workload", action="append", help="only these (default: all four)")
    parser.add_argument("--cache-dir", default=str(REPO / ".cache" / "test-models"))
    parser.add_argument("--server-arg", action="append", default=[])
    args = parser.parse_args()
    chosen = [w for w in workloads(args.requests) if not args.workload or w.name in args.workload]
    report: dict[str, Any] = {"benchmark": "serving", "model": args.model, "args": vars(args)}
    cache_dir = Path(args.cache_dir)
    with tempfile.TemporaryDirectory() as work:
        model_dir = model_dirs([args.model], cache_dir, Path(work))[args.model]
        for mode in ("on", "off"):
            server_args = ["--prefix-cache", mode, *args.server_arg]
            process, target = start_server(model_dir, cache_dir, server_args)
            try:
                with grpc.insecure_channel(target) as channel:
                    stub = generation_pb2_grpc.GenerationStub(channel)
                    stream(stub, [msg("user", "warm up")], 2)
                    for load in chosen:
                        outcome = run_workload(stub, load, args.rate, args.tokens, args.seed)
                        report.setdefault(load.name, {})[f"reuse_{mode}"] = outcome
                        print(load.name, mode, json.dumps(outcome), file=sys.stderr, flush=True)
            finally:
                process.terminate()
                process.wait(60)
    report["ratios"] = ratios(report)
    print(json.dumps(report, indent=2))


def ratios(report: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    chats = report.get("chats", {}).get("reuse_on")
    for name in ("chats", "system", "multiturn", "document"):
        runs = report.get(name)
        if not runs:
            continue
        on, off = runs["reuse_on"], runs["reuse_off"]
        out[f"{name}_ttft_p50_on_over_off"] = round(on["ttft_p50_s"] / off["ttft_p50_s"], 3)
        out[f"{name}_tokens_per_s_on_over_off"] = round(
            on["output_tokens_per_s"] / off["output_tokens_per_s"], 3
        )
        if chats and name != "chats":
            out[f"{name}_ttft_p50_over_chats"] = round(on["ttft_p50_s"] / chats["ttft_p50_s"], 3)
            out[f"{name}_tokens_per_s_over_chats"] = round(
                on["output_tokens_per_s"] / chats["output_tokens_per_s"], 3
            )
    return out


if __name__ == "__main__":
    main()
