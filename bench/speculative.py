"""Speculative decoding: the same requests with drafts and without, on one server.

One server (default flags: speculation on) serves every workload twice per repeat,
alternating: once with ``skip_speculation`` (each request decodes one token a step) and
once without (n-gram drafts verified in the packed step). The same prompts, greedy, EOS
allowed: the texts must be identical, so both runs generate the same tokens and the
tokens/s ratio is the speed-up. The server first serves unrelated traffic (``--warm``),
so its step-cost estimates are those of a server that has been running.

Workloads:
- ``copy``: repeat a given passage word for word (8 different passages / instructions);
- ``extract``: quote named fields of a document as JSON;
- ``chat``: independent short chats (speculation must not slow them down).

Prints JSON: per workload and stream count, tokens/s on and off, the ratio, acceptance
rate, TTFT and inter-token medians, and whether the texts were identical. Targets
(issue "Speculative decoding"): copy-heavy 1 stream >= 3x and 8 streams >= 1.5x; chats 8
streams >= 0.95x. Machines here are noisy: compare ratios from one run only.

    .venv/bin/python bench/speculative.py --model smollm2
    .venv/bin/python bench/speculative.py --model tiny --streams 1 2 --tokens 8 --repeats 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

import grpc  # noqa: E402
from concurrency import PROMPTS, start_streams  # noqa: E402
from stream import model_dirs, start_server  # noqa: E402
from zopilot_client.pb import generation_pb2 as pb  # noqa: E402
from zopilot_client.pb import generation_pb2_grpc  # noqa: E402

PASSAGES = [
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the "
    "tower from 1887 to 1889. Locally nicknamed La dame de fer, it was constructed as the "
    "centrepiece of the 1889 World's Fair, and to crown the centennial anniversary of the "
    "French Revolution.",
    "Photosynthesis is the process by which green plants and some other organisms use "
    "sunlight to synthesize foods from carbon dioxide and water. It generally involves the "
    "green pigment chlorophyll and generates oxygen as a by-product. The light-dependent "
    "reactions take place in the thylakoid membranes of the chloroplasts.",
    "The Great Barrier Reef is the world's largest coral reef system, composed of over "
    "2,900 individual reefs and 900 islands stretching for over 2,300 kilometres over an "
    "area of approximately 344,400 square kilometres. The reef is located in the Coral Sea, "
    "off the coast of Queensland, Australia.",
    "A compiler is a computer program that translates computer code written in one "
    "programming language into another language. The name is primarily used for programs "
    "that translate source code from a high-level programming language to a low-level "
    "programming language, such as assembly language or machine code, to create an "
    "executable program.",
]
INSTRUCTIONS = [
    "Repeat this passage word for word:\n\n{}",
    "Copy the following text exactly, without changing anything:\n\n{}",
]
DOCUMENT = (
    "INVOICE No. 2024-0318\nDate: 14 March 2024\nSeller: Northwind Traders Ltd, "
    "12 Harbour Road, Bristol BS1 4RN, United Kingdom\nBuyer: Contoso Pharmaceuticals GmbH, "
    "Hauptstrasse 221, 10827 Berlin, Germany\nDescription: 240 units of laboratory glassware "
    "(borosilicate beakers, 500 ml)\nTotal amount due: EUR 3,412.80\nPayment terms: 30 days "
    "net, bank transfer to IBAN DE89 3704 0044 0532 0130 00\n"
)
FIELDS = ["invoice_number", "date", "seller", "buyer", "description", "total", "iban"]


def workloads() -> dict[str, list[str]]:
    copy = [i.format(p) for p in PASSAGES for i in INSTRUCTIONS]
    extract = [
        f"{DOCUMENT}\nExtract these fields from the invoice above as a JSON object, quoting "
        f"each value exactly as written in the invoice: {', '.join(FIELDS[: 3 + i % 5])}."
        for i in range(8)
    ]
    return {"copy": copy, "extract": extract, "chat": list(PROMPTS[:8])}


def stream_one(stub: Any, request: pb.GenerateRequest, start: threading.Barrier) -> dict[str, Any]:
    start.wait(60)
    began = time.perf_counter()
    arrivals: list[float] = []
    text, last = [], None
    for chunk in stub.GenerateStream(request, timeout=900):
        if chunk.text:
            arrivals.append(time.perf_counter())
            text.append(chunk.text)
        last = chunk
    assert last is not None and arrivals, "a stream ended without text"
    return {
        "began": began,
        "arrivals": arrivals,
        "text": "".join(text),
        "tokens": last.usage.generated_tokens,
        "drafted": last.usage.draft_tokens,
        "accepted": last.usage.accepted_draft_tokens,
    }


def run_streams(stub: Any, requests: list[pb.GenerateRequest]) -> list[dict[str, Any]]:
    threads, results = start_streams(stub, requests, call=stream_one)
    for t in threads:
        t.join()
    return results


def measure(results: list[dict[str, Any]]) -> dict[str, float]:
    began = min(r["began"] for r in results)
    ended = max(r["arrivals"][-1] for r in results)
    gaps = [b - a for r in results for a, b in itertools.pairwise(r["arrivals"])]
    return {
        "tokens_per_s": sum(r["tokens"] for r in results) / (ended - began),
        "ttft_p50_ms": statistics.median((r["arrivals"][0] - r["began"]) * 1000 for r in results),
        # Chunks, not tokens: with drafts one chunk may carry several tokens.
        "chunk_gap_p50_ms": statistics.median(gaps) * 1000 if gaps else 0.0,
    }


def compare(
    stub: Any, prompts: list[str], streams: int, tokens: int, repeats: int
) -> dict[str, Any]:
    """``streams`` prompts at once, off then on, ``repeats`` times; medians of each."""
    chosen = [prompts[i % len(prompts)] for i in range(streams)]

    def requests(skip: bool) -> list[pb.GenerateRequest]:
        return [
            pb.GenerateRequest(
                messages=[pb.ChatMessage(role="user", content=p)],
                max_new_tokens=tokens,
                skip_speculation=skip,
            )
            for p in chosen
        ]

    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    identical, drafted, accepted = True, 0, 0
    for _ in range(repeats):
        off = run_streams(stub, requests(True))
        on = run_streams(stub, requests(False))
        runs["off"].append(measure(off))
        runs["on"].append(measure(on))
        identical &= [r["text"] for r in off] == [r["text"] for r in on]
        drafted += sum(r["drafted"] for r in on)
        accepted += sum(r["accepted"] for r in on)
    summary = {
        mode: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for mode, rs in runs.items()
    }
    return {
        "streams": streams,
        **summary,
        "tokens_per_s_ratio": summary["on"]["tokens_per_s"] / summary["off"]["tokens_per_s"],
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "draft_tokens": drafted,
        "identical_text": identical,
    }


def warm(stub: Any, requests: int) -> None:
    """Unrelated traffic first: measure a server that has been running."""
    for i in range(requests):
        stub.Generate(
            pb.GenerateRequest(
                messages=[pb.ChatMessage(role="user", content=PROMPTS[8 + i % 8])],
                max_new_tokens=16,
            ),
            timeout=300,
        )


TARGETS = {("copy", 1): 3.0, ("copy", 8): 1.5, ("extract", 1): 3.0, ("extract", 8): 1.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warm", type=int, default=8, help="unrelated requests served first")
    parser.add_argument("--workloads", nargs="+", default=["copy", "extract", "chat"])
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache")
    parser.add_argument("--server-arg", action="append", default=[], help="extra server flag")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        model_dir = model_dirs([args.model], args.cache_dir, Path(work))[args.model]
        process, target = start_server(model_dir, args.cache_dir, args.server_arg)
        try:
            stub = generation_pb2_grpc.GenerationStub(grpc.insecure_channel(target))
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).kv_cache
            warm(stub, args.warm)
            texts = workloads()
            results: dict[str, list[dict[str, Any]]] = {}
            for name in args.workloads:
                for n in args.streams:
                    row = compare(stub, texts[name], n, args.tokens, args.repeats)
                    results.setdefault(name, []).append(row)
                    print(f"{name} x{n}: {row['tokens_per_s_ratio']:.2f}x", file=sys.stderr)
        finally:
            process.terminate()
            process.wait(60)
    for name, rows in results.items():
        for row in rows:
            target_ratio = TARGETS.get((name, row["streams"]), 0.95 if name == "chat" else None)
            row["target_ratio"] = target_ratio
            row["met"] = target_ratio is None or row["tokens_per_s_ratio"] >= target_ratio
    report = {
        "model": args.model,
        "speculative_tokens": info.speculative_tokens,
        "ngram": [info.speculative_ngram_min, info.speculative_ngram_max],
        "tokens": args.tokens,
        "repeats": args.repeats,
        "workloads": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
