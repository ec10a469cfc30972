"""Serving as users load it: Poisson arrivals over four workloads, per server configuration.

Each workload sends ``--requests`` GenerateStream calls to the real server (a subprocess)
with exponentially distributed gaps (``--rate`` per second, fixed seed), greedy,
``--tokens`` new tokens each (EOS ignored), and reports output tokens/s (all tokens over
the wall time from the first arrival to the last chunk), TTFT p50/p90, inter-token
p50/p99 and the share of prompt tokens served from the prefix cache:

- ``chats``: independent short chats (~40 prompt tokens);
- ``system``: one ~700-word system prompt, then each user's own question (~850);
- ``multiturn``: conversations of four turns (``--requests`` / 4 of them), the history
  re-sent every turn and the next turn sent when the answer arrived (~530 by the last
  turn); every result records its turn, and ``later_turn_ttft_p50_s`` is the TTFT p50 of
  turns >= 2 (``ttft_p50_by_turn_s`` per turn);
- ``document``: ``--requests`` / 4 ~1,500-word documents, four questions on each (~1,840).

One server runs per configuration: each ``--prefix-cache`` mode (default ``on off``)
times each ``--stall`` value (``--max-step-stall V`` added to the ``--server-arg``s; not
passed without ``--stall``). On each server, in this order:

1. one short request (one-time start-up costs);
2. ``warm``: ``--warm`` requests (default 24, more than the 16 KV slots of the default
   ``--max-batch-size``) of unrelated traffic, four at a time: chats under their own
   system prompts (~210 tokens) and short memos (~410), sharing nothing with the
   workloads beyond the chat template, so the prefix cache is full of other prompts as in
   production (``--warm 0``: a fresh server);
3. ``alone``: on the now idle server (after a 1 s pause), one request at a time, prompts
   no workload sends: ``alone_chat_ttft_s`` (median of 3 chats shaped like ``chats``) and
   ``alone_document_ttft_s`` (1 document shaped like ``document``);
4. the workloads, one after the other.

Warm and alone requests generate ``--tokens`` tokens too.

JSON on stdout: ``benchmark``, ``model``, ``args``, then one key per configuration,
``reuse_on`` / ``reuse_off`` (``reuse_on_stall_1.5`` ... with ``--stall``), holding
``server_args``, ``warm``, ``alone``, one entry per workload and, for prefix-cache-on
servers, ``ratios`` and ``targets``; with ``--stall``, ``stall_sweep`` lists per
configuration and workload the TTFT p50/p90 (multiturn: and later turns' p50) and
inter-token p50/p99: the TTFT / inter-token trade-off table.

``ratios`` (issue "Prefix reuse"): ``<workload>_ttft_p50_on_over_off`` and
``<workload>_tokens_per_s_on_over_off`` against the reuse-off server of the same stall
value (targets: document TTFT p50 <= 0.3x reuse-off, nothing slower beyond noise);
``<workload>_ttft_p50_over_chats`` and ``<workload>_tokens_per_s_over_chats`` (system and
later-turn TTFT p50 <= 2.5x the chats', system tokens/s >= 0.6x the chats').

``targets`` (issue "Packed step"), each ``{"ratio", "limit", "met"}``, all from one server:

- ``chats_ttft_p50_over_alone`` <= 2.5 and ``chats_ttft_p90_over_alone`` <= 4: the chats'
  TTFT against ``alone_chat_ttft_s``;
- ``chats_itl_p99_over_p50`` <= 2.5: the chats' inter-token p99 against its p50;
- ``multiturn_later_turn_ttft_p50_over_chats`` <= 1.5: ``later_turn_ttft_p50_s`` against
  the chats' TTFT p50;
- ``document_ttft_p50_over_alone`` <= 4: the documents' TTFT p50 against
  ``alone_document_ttft_s``.

Machines here are noisy: compare ratios from the same run, never absolute numbers across
runs.

    .venv/bin/python bench/serving.py --model smollm2
    .venv/bin/python bench/serving.py --model smollm2 --prefix-cache on --stall 1 1.5 2 4
    .venv/bin/python bench/serving.py --model tiny --requests 4 --tokens 8 --warm 4 \\
        --prefix-cache on
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

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

# Chats measured alone: the shape of ``chats``, topics no workload asks about.
ALONE_TOPICS = ["signal flags", "mooring lines", "anchor chains"]

# The document measured alone: its first sentence starts none of the default workload's
# documents (seeds 100-103), so it leaves them no cached block beyond "Document:".
ALONE_DOCUMENT_SEED = 903

WARM_TOPICS = ["forklift batteries", "pallet labels", "night shifts", "gate passes"]
WARM_CONCURRENCY = 4
SETTLE_S = 1.0  # pause after the warm traffic, so the alone requests find an idle server

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

QUESTIONS = ["Summarise it.", "Who boards ships?", "What is logged?", "When do ships enter?"]

WORKLOADS = ("chats", "system", "multiturn", "document")

# ratios: label -> the workload figure compared
RATIO_FIGURES = {"ttft_p50": "ttft_p50_s", "tokens_per_s": "output_tokens_per_s"}

# Targets of the "packed step" issue: name, limit, (entry, figure) over (entry, figure).
TARGETS = [
    ("chats_ttft_p50_over_alone", 2.5, ("chats", "ttft_p50_s"), ("alone", "alone_chat_ttft_s")),
    ("chats_ttft_p90_over_alone", 4.0, ("chats", "ttft_p90_s"), ("alone", "alone_chat_ttft_s")),
    ("chats_itl_p99_over_p50", 2.5, ("chats", "itl_p99_ms"), ("chats", "itl_p50_ms")),
    (
        "multiturn_later_turn_ttft_p50_over_chats",
        1.5,
        ("multiturn", "later_turn_ttft_p50_s"),
        ("chats", "ttft_p50_s"),
    ),
    (
        "document_ttft_p50_over_alone",
        4.0,
        ("document", "ttft_p50_s"),
        ("alone", "alone_document_ttft_s"),
    ),
]

SWEEP_FIGURES = ("ttft_p50_s", "ttft_p90_s", "later_turn_ttft_p50_s", "itl_p50_ms", "itl_p99_ms")

Messages = list[pb.ChatMessage]


def words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        out += rng.choice(SENTENCES).split()
    return " ".join(out[:n])


def msg(role: str, content: str) -> pb.ChatMessage:
    return pb.ChatMessage(role=role, content=content)


def chat(topic: str) -> Messages:
    return [msg("user", f"Tell me one fact about {topic}.")]


def document_question(seed: int, question: str) -> Messages:
    return [msg("user", f"Document:\n{words(1500, seed)}\n\nQuestion: {question}")]


class Workload:
    """Requests to send; ``follow_up`` makes a conversation's next turn from its answer."""

    def __init__(self, name: str, first: list[Messages]) -> None:
        self.name = name
        self.first = first
        self.follow_up: Callable[[Messages, str], Messages | None] | None = None


def next_turn(history: Messages, answer: str) -> Messages | None:
    """The multiturn follow-up: the history, the answer and the next question (4 turns)."""
    turn = sum(m.role == "user" for m in history)
    if turn >= 4:
        return None
    return [*history, msg("assistant", answer), msg("user", QUESTIONS[turn % 4])]


def workloads(requests: int) -> list[Workload]:
    chats = Workload("chats", [chat(TOPICS[i % 16]) for i in range(requests)])
    system_prompt = "You are the assistant of a large port. " + words(700, 1)
    system = Workload(
        "system",
        [
            [msg("system", system_prompt), msg("user", f"What about {TOPICS[i % 16]}?")]
            for i in range(requests)
        ],
    )
    multiturn = Workload(
        "multiturn",
        [
            [msg("system", words(250, 10 + i)), msg("user", f"Explain {TOPICS[i % 16]}.")]
            for i in range(max(1, requests // 4))
        ],
    )
    multiturn.follow_up = next_turn
    document = Workload(
        "document",
        [
            document_question(100 + d, QUESTIONS[q])
            for d in range(max(1, requests // 4))
            for q in range(4)
        ],
    )
    return [chats, system, multiturn, document]


def warm_requests(count: int) -> list[Messages]:
    """Unrelated traffic: chats under their own system prompts and short memos.

    Each starts with text no workload prompt starts with, so none shares a cached block
    with the workloads beyond the chat template.
    """
    out: list[Messages] = []
    for k in range(count):
        topic = WARM_TOPICS[k % len(WARM_TOPICS)]
        if k % 2:
            memo = f"Memo {k} from the warehouse office:\n{words(300, 700 + k)}"
            out.append([msg("user", f"{memo}\n\nQuestion: What does the memo ask for?")])
        else:
            briefing = f"Shift {k} briefing for the yard crew. {words(150, 500 + k)}"
            out.append([msg("system", briefing), msg("user", f"Any news on {topic}?")])
    return out


def stream(stub: Any, messages: Messages, tokens: int) -> dict[str, Any]:
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


def ttft(result: dict[str, Any]) -> float:
    return result["arrivals"][0] - result["began"]


def run_workload(stub: Any, load: Workload, rate: float, tokens: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def conversation(messages: Messages | None) -> None:
        turn = 1
        while messages is not None:
            result = {**stream(stub, messages, tokens), "turn": turn}
            with lock:
                results.append(result)
            if load.follow_up is None:
                return
            messages = load.follow_up(messages, result["text"])
            turn += 1

    threads = []
    for messages in load.first:
        thread = threading.Thread(target=conversation, args=(messages,))
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
    ttfts = [ttft(r) for r in results]
    itl = [b - a for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:], strict=False)]
    wall = max(r["arrivals"][-1] for r in results) - min(r["began"] for r in results)
    prompt = sum(r["input_tokens"] for r in results)
    summary = {
        "requests": len(results),
        "prompt_tokens_mean": round(prompt / len(results)),
        "output_tokens_per_s": round(tokens * len(results) / wall, 2),
        "ttft_p50_s": round(percentile(ttfts, 0.5), 4),
        "ttft_p90_s": round(percentile(ttfts, 0.9), 4),
        "itl_p50_ms": round(percentile(itl, 0.5) * 1000, 1),
        "itl_p99_ms": round(percentile(itl, 0.99) * 1000, 1),
        "cache_hit_rate": round(sum(r["cached_tokens"] for r in results) / prompt, 3),
    }
    return {**summary, **per_turn(results)}


def per_turn(results: list[dict[str, Any]]) -> dict[str, Any]:
    """For conversations: TTFT p50 of turns >= 2 and per turn; nothing for single requests."""
    later = [ttft(r) for r in results if r["turn"] >= 2]
    if not later:
        return {}
    by_turn: dict[str, float] = {}
    for turn in sorted({r["turn"] for r in results}):
        values = [ttft(r) for r in results if r["turn"] == turn]
        by_turn[str(turn)] = round(percentile(values, 0.5), 4)
    return {
        "later_turn_ttft_p50_s": round(percentile(later, 0.5), 4),
        "ttft_p50_by_turn_s": by_turn,
    }


def warm(stub: Any, count: int, tokens: int) -> dict[str, Any]:
    """Fill the prefix cache with unrelated prompts, ``WARM_CONCURRENCY`` at a time."""
    began = time.perf_counter()
    with ThreadPoolExecutor(WARM_CONCURRENCY) as pool:
        results = list(pool.map(lambda m: stream(stub, m, tokens), warm_requests(count)))
    return {
        "requests": count,
        "prompt_tokens": sum(r["input_tokens"] for r in results),
        "seconds": round(time.perf_counter() - began, 2),
    }


def alone(stub: Any, tokens: int, *, chats: bool, document: bool) -> dict[str, Any]:
    """TTFT of one request at a time on the idle server, prompts no workload sends."""
    out: dict[str, Any] = {}
    if chats:
        runs = [stream(stub, chat(topic), tokens) for topic in ALONE_TOPICS]
        out["alone_chat_ttft_s"] = round(statistics.median(ttft(r) for r in runs), 4)
        out["alone_chat_ttft_runs_s"] = [round(ttft(r), 4) for r in runs]
        out["alone_chat_prompt_tokens"] = runs[0]["input_tokens"]
    if document:
        run = stream(stub, document_question(ALONE_DOCUMENT_SEED, QUESTIONS[0]), tokens)
        out["alone_document_ttft_s"] = round(ttft(run), 4)
        out["alone_document_prompt_tokens"] = run["input_tokens"]
    return out


@contextmanager
def serving(model_dir: Path, cache_dir: Path, server_args: list[str]) -> Iterator[Any]:
    """A GenerationStub on a fresh server; the server's last log lines if the body fails."""
    process, target = start_server(model_dir, cache_dir, server_args)
    tail = process.log_tail  # type: ignore[attr-defined]
    try:
        with grpc.insecure_channel(target) as channel:
            yield generation_pb2_grpc.GenerationStub(channel)
    except BaseException:
        print("server log tail:\n" + "".join(tail), file=sys.stderr, flush=True)
        raise
    finally:
        process.terminate()
        process.wait(60)


class Server(NamedTuple):
    """One server configuration: its report key, prefix-cache mode, stall and arguments."""

    key: str
    prefix_cache: str
    stall: float | None
    args: tuple[str, ...]


def configurations(args: argparse.Namespace) -> list[Server]:
    """Each ``--prefix-cache`` mode times each ``--stall`` value, in order."""
    out = []
    for mode in dict.fromkeys(args.prefix_cache):
        for stall in dict.fromkeys(args.stall or [None]):
            key, extra = f"reuse_{mode}", []
            if stall is not None:
                key, extra = f"{key}_stall_{stall:g}", ["--max-step-stall", str(stall)]
            server_args = ("--prefix-cache", mode, *args.server_arg, *extra)
            out.append(Server(key, mode, stall, server_args))
    return out


def bench_server(
    stub: Any, chosen: list[Workload], args: argparse.Namespace, key: str
) -> dict[str, Any]:
    """Warm traffic, the alone baselines, then every chosen workload, on one server."""
    names = {load.name for load in chosen}
    stream(stub, [msg("user", "warm up")], 2)
    entry: dict[str, Any] = {"warm": warm(stub, args.warm, args.tokens)}
    time.sleep(SETTLE_S)
    entry["alone"] = alone(stub, args.tokens, chats="chats" in names, document="document" in names)
    print(key, "alone", json.dumps(entry["alone"]), file=sys.stderr, flush=True)
    for load in chosen:
        entry[load.name] = run_workload(stub, load, args.rate, args.tokens, args.seed)
        print(key, load.name, json.dumps(entry[load.name]), file=sys.stderr, flush=True)
    return entry


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def ratios(on: dict[str, Any], off: dict[str, Any] | None) -> dict[str, float | None]:
    """Per workload: reuse on over off (same stall value) and over the chats (reuse on)."""
    out: dict[str, float | None] = {}
    for name in WORKLOADS:
        if name not in on:
            continue
        for label, figure in RATIO_FIGURES.items():
            if off and name in off:
                out[f"{name}_{label}_on_over_off"] = ratio(on[name][figure], off[name][figure])
            if name != "chats" and "chats" in on:
                out[f"{name}_{label}_over_chats"] = ratio(on[name][figure], on["chats"][figure])
    return out


def targets(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The "packed step" targets whose figures were measured: ratio, limit, met."""
    out: dict[str, dict[str, Any]] = {}
    for name, limit, (top, over), (bottom, under) in TARGETS:
        value = ratio(entry.get(top, {}).get(over), entry.get(bottom, {}).get(under))
        if value is not None:
            out[name] = {"ratio": value, "limit": limit, "met": value <= limit}
    return out


def stall_sweep(report: dict[str, Any], servers: list[Server]) -> list[dict[str, Any]]:
    """One row per (server, workload): the TTFT / inter-token trade-off table."""
    rows = []
    for server in servers:
        for name in WORKLOADS:
            figures = report[server.key].get(name)
            if figures is None:
                continue
            row = {"server": server.key, "prefix_cache": server.prefix_cache}
            row |= {"stall": server.stall, "workload": name}
            rows.append(row | {f: figures[f] for f in SWEEP_FIGURES if f in figures})
    return rows


def add_judgements(report: dict[str, Any], servers: list[Server]) -> None:
    """``ratios`` and ``targets`` into every prefix-cache-on server's entry."""
    for server in servers:
        if server.prefix_cache == "on":
            off = report.get(server.key.replace("reuse_on", "reuse_off", 1))
            report[server.key]["ratios"] = ratios(report[server.key], off)
            report[server.key]["targets"] = targets(report[server.key])


def stall_value(text: str) -> float:
    value = float(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--stall {text}: must be >= 1")
    return value


def server_accepts(flag: str) -> bool:
    """Whether the installed server's ``--help`` lists ``flag``."""
    command = [sys.executable, "-m", "zopilot_server", "--help"]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    return flag in shown.stdout


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="smollm2")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--rate", type=float, default=1.0, help="arrivals per second")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workload", action="append", help="only these (default: all four)")
    parser.add_argument("--cache-dir", default=str(REPO / ".cache" / "test-models"))
    parser.add_argument("--server-arg", action="append", default=[])
    parser.add_argument(
        "--warm", type=int, default=24, help="unrelated requests before measuring (0: fresh)"
    )
    parser.add_argument("--prefix-cache", nargs="+", choices=("on", "off"), default=["on", "off"])
    parser.add_argument(
        "--stall", nargs="+", type=stall_value, help="a server per --max-step-stall value"
    )
    args = parser.parse_args()
    if args.stall and not server_accepts("--max-step-stall"):
        parser.error("the installed server has no --max-step-stall option yet")
    return args


def main() -> None:
    args = parse_args()
    chosen = [w for w in workloads(args.requests) if not args.workload or w.name in args.workload]
    report: dict[str, Any] = {"benchmark": "serving", "model": args.model, "args": vars(args)}
    cache_dir = Path(args.cache_dir)
    servers = configurations(args)
    with tempfile.TemporaryDirectory() as work:
        model_dir = model_dirs([args.model], cache_dir, Path(work))[args.model]
        for server in servers:
            with serving(model_dir, cache_dir, list(server.args)) as stub:
                entry = bench_server(stub, chosen, args, server.key)
            report[server.key] = {"server_args": list(server.args), **entry}
    add_judgements(report, servers)
    if args.stall:
        report["stall_sweep"] = stall_sweep(report, servers)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
