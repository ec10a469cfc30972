"""Routing that keeps the cache: smg in front of two replicas, cache_aware vs round_robin.

Two real server processes (``--protocols zopilot,vllm``, each with its /metrics port) and
the real ``smg`` binary (PyPI, pinned) in front, driven with the OpenAI Python client
(streamed chat completions, greedy, ``ignore_eos``, ``--tokens`` new tokens each). For
each ``--policies`` entry (default ``cache_aware round_robin``) smg is started afresh
over the SAME two replicas, whose prefix caches are emptied first with
``VllmEngine/FlushCache`` (so no policy inherits the other's cache), then two workloads:

- ``multiturn``: ``--conversations`` conversations, each its own ~150-word document, then
  ``--turns`` questions; a conversation's next turn is sent when its answer arrived (the
  history re-sent), conversations start with exponential gaps (``--rate`` per second);
- ``system``: ``--system-requests`` requests sharing one ~300-word system prompt, each
  with its own question, the same arrivals.

Per workload: ``prefix_hit_rate`` (prompt tokens served from the prefix cache over prompt
tokens looked up, from the replicas' ``zopilot_prefix_cache_hits`` / ``_queries``
counters, after minus before, both replicas summed), ``prompt_tokens_per_replica`` (each
replica's share of those prompt tokens: where smg sent the work), TTFT p50/p90 at the
client (first content delta) and output tokens/s.

``gateway_overhead``: one stream at a time, ``--overhead-tokens`` tokens, through smg
(OpenAI streaming) and straight to a replica (zopilot GenerateStream, same messages and
chat template), alternated ``--overhead-repeats`` times; ``tokens_per_s_ratio`` = median
through smg / median direct (target >= 0.95).

``comparison`` (cache_aware over round_robin, same run): hit-rate ratio (target >= 1.5,
with cache_aware's multiturn hit rate >= 0.6) and TTFT p50 ratio (target < 1), each
``{"value", "limit", "met"}``. Machines here are noisy: compare ratios of one run only.

    .venv/bin/python bench/gateway.py --model smollm2
    .venv/bin/python bench/gateway.py --model tiny --conversations 2 --turns 2 \\
        --system-requests 2 --tokens 4 --overhead-tokens 8 --overhead-repeats 1
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

import grpc  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from serving import percentile, words  # noqa: E402
from stream import model_dirs, start_server  # noqa: E402
from support import free_port  # noqa: E402
from zopilot_client.pb import generation_pb2 as pb  # noqa: E402
from zopilot_client.pb import generation_pb2_grpc  # noqa: E402

SMG = shutil.which("smg", path=str(Path(sys.executable).parent)) or shutil.which("smg")
QUESTIONS = ["Summarise it.", "Who boards ships?", "What is logged?", "When do ships enter?"]
# Slots enough that every conversation's history can stay cached on either replica.
REPLICA_ARGS = ["--protocols", "zopilot,vllm", "--max-batch-size", "8", "--kv-slot-tokens", "1024"]

Messages = list[dict[str, str]]


def scrape(metrics_port: int) -> dict[str, float]:
    """The replica's prefix-cache counters (prompt tokens looked up, served from it)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    figures = {"hits": 0.0, "queries": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "zopilot_prefix_cache_hits_total":
                figures["hits"] += sample.value
            elif sample.name == "zopilot_prefix_cache_queries_total":
                figures["queries"] += sample.value
    return figures


def flush(target: str) -> None:
    """Empty the replica's prefix cache (VllmEngine/FlushCache, the published stubs)."""
    from smg_grpc_proto.generated import common_pb2, vllm_engine_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = vllm_engine_pb2_grpc.VllmEngineStub(channel)
        assert stub.FlushCache(common_pb2.FlushCacheRequest(), timeout=30).success


@contextmanager
def gateway(policy: str, targets: list[str], log: Path) -> Iterator[tuple[Any, str]]:
    """smg over ``targets`` with ``policy``; yields an OpenAI client and the model id."""
    import openai

    port = free_port()
    process = subprocess.Popen(
        [SMG, "launch", "--backend", "vllm", "--policy", policy, "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warn", "--worker-startup-timeout-secs", "120",
         # A CPU replica on a shared 2-core machine can take seconds per prefill: smg's
         # default liveness (2 s without contact, 3 s without progress) vetoes it as
         # "wedged" and, under cache_aware, never routes to it again in the run.
         "--worker-stall-secs", "60", "--worker-wedge-secs", "300",
         "--worker-urls", *(f"grpc://{t}" for t in targets)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=600)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            try:
                models = [m.id for m in client.models.list().data]
                if models and healthy_workers(port) == len(targets):
                    break
            except (openai.APIError, OSError):
                pass
            time.sleep(0.5)
        yield client, models[0]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def healthy_workers(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/workers", timeout=5) as reply:
        body = json.loads(reply.read())
    workers = body.get("workers", body) if isinstance(body, dict) else body
    return sum(1 for w in workers if w.get("is_healthy", True))


def chat_stream(client: Any, model: str, messages: Messages, tokens: int) -> dict[str, Any]:
    began = time.perf_counter()
    first = None
    text: list[str] = []
    completion = 0
    events = client.chat.completions.create(
        model=model, messages=messages, max_tokens=tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    for event in events:
        if event.choices and event.choices[0].delta.content:
            first = first if first is not None else time.perf_counter()
            text.append(event.choices[0].delta.content)
        if event.usage is not None:
            completion = event.usage.completion_tokens
    end = time.perf_counter()
    assert first is not None and completion == tokens, (completion, tokens)
    return {"ttft": first - began, "began": began, "end": end, "text": "".join(text)}


def conversations(count: int, turns: int) -> list[tuple[Messages, int]]:
    """Each conversation: its own document and first question; ``turns`` turns in all."""
    return [
        ([{"role": "user", "content": f"Document {i}:\n{words(150, 500 + i)}\n\n{QUESTIONS[0]}"}],
         turns)
        for i in range(count)
    ]  # fmt: skip


def system_requests(count: int) -> list[tuple[Messages, int]]:
    system = "You are the assistant of a large port. " + words(300, 7)
    return [
        ([{"role": "system", "content": system},
          {"role": "user", "content": f"Question {i}: {QUESTIONS[i % 4]}"}], 1)
        for i in range(count)
    ]  # fmt: skip


def run_workload(
    client: Any, model: str, starts: list[tuple[Messages, int]], args: argparse.Namespace,
    metrics_ports: list[int],
) -> dict[str, Any]:  # fmt: skip
    before = [scrape(p) for p in metrics_ports]
    rng = random.Random(args.seed)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def converse(messages: Messages, turns: int) -> None:
        for turn in range(1, turns + 1):
            result = chat_stream(client, model, messages, args.tokens)
            with lock:
                results.append(result)
            messages = [*messages, {"role": "assistant", "content": result["text"]},
                        {"role": "user", "content": QUESTIONS[turn % 4]}]  # fmt: skip

    threads = []
    for messages, turns in starts:
        thread = threading.Thread(target=converse, args=(messages, turns))
        thread.start()
        threads.append(thread)
        time.sleep(rng.expovariate(args.rate))
    for thread in threads:
        thread.join()
    after = [scrape(p) for p in metrics_ports]
    hits = sum(a["hits"] - b["hits"] for a, b in zip(after, before, strict=True))
    queries = sum(a["queries"] - b["queries"] for a, b in zip(after, before, strict=True))
    ttfts = [r["ttft"] for r in results]
    wall = max(r["end"] for r in results) - min(r["began"] for r in results)
    return {
        "requests": len(results),
        "prefix_hit_rate": round(hits / queries, 3) if queries else 0.0,
        "prompt_tokens_looked_up": int(queries),
        "prompt_tokens_per_replica": [
            int(a["queries"] - b["queries"]) for a, b in zip(after, before, strict=True)
        ],
        "ttft_p50_s": round(percentile(ttfts, 0.5), 4),
        "ttft_p90_s": round(percentile(ttfts, 0.9), 4),
        "output_tokens_per_s": round(args.tokens * len(results) / wall, 2),
    }


def overhead(client: Any, model: str, target: str, args: argparse.Namespace) -> dict[str, Any]:
    """One stream at a time through smg and straight to a replica, alternated."""
    messages = [{"role": "user", "content": "Tell me about harbour cranes."}]
    request = pb.GenerateRequest(
        messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
        max_new_tokens=args.overhead_tokens,
        ignore_eos=True,
    )
    through, direct = [], []
    with grpc.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        for _ in range(args.overhead_repeats):
            result = chat_stream(client, model, messages, args.overhead_tokens)
            through.append(args.overhead_tokens / (result["end"] - result["began"]))
            began = time.perf_counter()
            chunks = list(stub.GenerateStream(request, timeout=600))
            last = chunks[-1] if chunks else None
            assert last is not None and last.usage.generated_tokens == args.overhead_tokens
            direct.append(args.overhead_tokens / (time.perf_counter() - began))
    smg, own = statistics.median(through), statistics.median(direct)
    return {
        "tokens": args.overhead_tokens,
        "through_smg_tokens_per_s": round(smg, 2),
        "direct_tokens_per_s": round(own, 2),
        "tokens_per_s_ratio": round(smg / own, 3),
        "target": {"limit": 0.95, "met": smg / own >= 0.95},
    }


def judge(value: float | None, limit: float, *, at_least: bool) -> dict[str, Any]:
    met = value is not None and (value >= limit if at_least else value < limit)
    return {"value": value, "limit": limit, "met": met}


def compare(policies: dict[str, Any]) -> dict[str, Any]:
    if not {"cache_aware", "round_robin"} <= set(policies):
        return {}
    aware, robin = policies["cache_aware"], policies["round_robin"]
    out: dict[str, Any] = {}
    for workload in ("multiturn", "system"):
        a, r = aware[workload], robin[workload]
        hit = a["prefix_hit_rate"] / r["prefix_hit_rate"] if r["prefix_hit_rate"] else None
        out[workload] = {
            "hit_rate_cache_aware": a["prefix_hit_rate"],
            "hit_rate_round_robin": r["prefix_hit_rate"],
            "ttft_p50_cache_aware_s": a["ttft_p50_s"],
            "ttft_p50_round_robin_s": r["ttft_p50_s"],
            "hit_rate_ratio": judge(round(hit, 3) if hit else hit, 1.5, at_least=True),
            "ttft_p50_ratio": judge(
                round(a["ttft_p50_s"] / r["ttft_p50_s"], 3), 1.0, at_least=False
            ),
        }
    out["multiturn"]["hit_rate_cache_aware_target"] = judge(
        aware["multiturn"]["prefix_hit_rate"], 0.6, at_least=True
    )
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="smollm2")
    parser.add_argument("--policies", nargs="+", default=["cache_aware", "round_robin"])
    parser.add_argument("--conversations", type=int, default=10)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--system-requests", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rate", type=float, default=1.0, help="conversation starts per s")
    parser.add_argument("--overhead-tokens", type=int, default=64)
    parser.add_argument("--overhead-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "bench-models")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if SMG is None:
        sys.exit("smg is not installed (requirements-dev.txt pins it)")
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    model_dir = model_dirs([args.model], args.cache_dir, work)[args.model]
    metrics_ports = [free_port(), free_port()]
    replicas = [
        start_server(model_dir, args.cache_dir, [*REPLICA_ARGS, "--metrics-port", str(p)])
        for p in metrics_ports
    ]
    targets = [target for _, target in replicas]
    report: dict[str, Any] = {
        "benchmark": "gateway",
        "model": args.model,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "replicas": "the same two for every policy, prefix caches flushed before each",
        "policies": {},
    }
    try:
        for policy in args.policies:
            for target in targets:
                flush(target)
            with gateway(policy, targets, work / f"smg-{policy}.log") as (client, model):
                chat_stream(client, model, [{"role": "user", "content": "Hi."}], 2)  # warm-up
                report["policies"][policy] = {
                    "multiturn": run_workload(
                        client,
                        model,
                        conversations(args.conversations, args.turns),
                        args,
                        metrics_ports,
                    ),
                    "system": run_workload(
                        client,
                        model,
                        system_requests(args.system_requests),
                        args,
                        metrics_ports,
                    ),
                }
                if policy == args.policies[-1]:
                    report["gateway_overhead"] = overhead(client, model, targets[0], args)
        report["comparison"] = compare(report["policies"])
    finally:
        for process, _ in replicas:
            process.send_signal(signal.SIGTERM)
        for process, _ in replicas:
            process.wait(timeout=60)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
