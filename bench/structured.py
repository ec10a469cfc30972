"""Structured output: tokens/s with and without a JSON schema, and schema compile times.

For each N (concurrent GenerateStream calls against the real server, a subprocess) it
runs, alternating, the same N chat prompts:

- free: no constraint, EOS ignored, exactly ``--tokens`` new tokens per stream;
- constrained: a JSON schema whose shortest valid document is longer than ``--tokens``
  (an array of at least 50 strings), so every stream also runs exactly ``--tokens``
  tokens and ends with LENGTH: the same work, plus a grammar mask per row and step.

Aggregate tokens/s (first call to last chunk) of each, medians of ``--repeats``
alternating runs, and their ratio. Then, in
process, the grammar compile time per schema: the first constrained request (which
builds llguidance's view of the tokenizer), new schemas (uncached) and a repeated one
(cached), and the per-step mask cost.

Prints JSON. Target (issue "Structured output"): ``tokens_per_s_ratio`` >= 0.9 at N = 8.
Machines here are noisy: compare ratios from one run only.

    .venv/bin/python bench/structured.py --model smollm2 --n 1 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
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

# Valid documents need at least 50 strings: longer than any --tokens used here.
LONG_SCHEMA = {
    "type": "object",
    "properties": {
        "notes": {
            "type": "array",
            "minItems": 50,
            "items": {"type": "string", "maxLength": 60},
        }
    },
    "required": ["notes"],
    "additionalProperties": False,
}


def person_schema(variant: int) -> dict[str, Any]:
    """A typical extraction schema; ``variant`` makes each one new to the cache."""
    return {
        "type": "object",
        "properties": {
            f"name_{variant}": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "email": {"type": "string", "format": "email"},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 5},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"pattern": "^[0-9]{5}$"}},
                "required": ["city"],
            },
        },
        "required": [f"name_{variant}", "age"],
    }


def run_streams(stub: Any, prompts: list[str], tokens: int, schema: str) -> dict[str, float]:
    """N streams started together; aggregate tokens/s from the first call to the end."""
    fields = {"json_schema": schema} if schema else {}
    requests = [chat_request(p + " Answer as JSON.", tokens, **fields) for p in prompts]
    measured = grpc_concurrent(stub, requests)
    assert set(measured["finish_reasons"]) == {pb.FINISH_REASON_LENGTH}, measured
    return {"tokens_per_s": measured["tokens_per_s"]}


def compile_times(model_dir: Path, schemas: int = 8) -> dict[str, float]:
    """Compile times (ms) in process, as the server's validation thread sees them."""
    from transformers import AutoTokenizer
    from zopilot_server.generation.model.constraints import ConstraintCompiler, ConstraintKind

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    compiler = ConstraintCompiler(
        tokenizer, vocab_size=len(tokenizer), eos_token_ids=[tokenizer.eos_token_id]
    )

    def timed(source: str) -> float:
        began = time.perf_counter()
        compiler.compile(ConstraintKind.JSON_SCHEMA, source)
        return (time.perf_counter() - began) * 1000

    first = timed(json.dumps(person_schema(-1)))
    uncached = [timed(json.dumps(person_schema(i))) for i in range(schemas)]
    cached = [timed(json.dumps(person_schema(0))) for _ in range(schemas)]
    state = compiler.compile(ConstraintKind.JSON_SCHEMA, json.dumps(LONG_SCHEMA)).start()
    masks = []
    for token in tokenizer('{"notes": ["one", "two", "three", "four"', add_special_tokens=False)[
        "input_ids"
    ]:
        began = time.perf_counter()
        state.allowed()
        masks.append((time.perf_counter() - began) * 1000)
        state.advance(token)
    return {
        "first_request_ms": first,
        "uncached_median_ms": statistics.median(uncached),
        "cached_median_ms": statistics.median(cached),
        "mask_per_step_median_ms": statistics.median(masks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="smollm2")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per N")
    parser.add_argument("--cache-dir", default=str(REPO / ".cache" / "test-models"))
    args = parser.parse_args()
    cache_dir = Path(args.cache_dir)
    schema = json.dumps(LONG_SCHEMA)
    with tempfile.TemporaryDirectory() as work:
        model_dir = model_dirs([args.model], cache_dir, Path(work))[args.model]
        server_args = ["--max-batch-size", str(max(args.n))]
        process, target = start_server(model_dir, cache_dir, server_args)
        results = []
        try:
            with grpc.insecure_channel(target) as channel:
                stub = generation_pb2_grpc.GenerationStub(channel)
                run_streams(stub, PROMPTS[:2], 4, "")  # warm-up, and the tokenizer view
                run_streams(stub, PROMPTS[:2], 4, schema)
                for n in args.n:
                    prompts = PROMPTS[:n]
                    free, constrained = [], []
                    for _ in range(args.repeats):  # alternating: drift hits both alike
                        free.append(run_streams(stub, prompts, args.tokens, "")["tokens_per_s"])
                        constrained.append(
                            run_streams(stub, prompts, args.tokens, schema)["tokens_per_s"]
                        )
                    results.append(
                        {
                            "n": n,
                            "free_tokens_per_s": statistics.median(free),
                            "json_schema_tokens_per_s": statistics.median(constrained),
                            "tokens_per_s_ratio": statistics.median(constrained)
                            / statistics.median(free),
                            "runs": {"free": free, "json_schema": constrained},
                        }
                    )
        finally:
            process.terminate()
            process.wait(30)
        compiled = compile_times(model_dir)
    report = {
        "benchmark": "structured",
        "model": args.model,
        "new_tokens": args.tokens,
        "results": results,
        "compile": compiled,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
