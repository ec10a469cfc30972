"""Prefix reuse: the index on its own (no torch), then every arena path on real models
(same slot, copied prefix, partial block, evicted, private), each generating exactly
what transformers' own ``generate`` does without any cache reuse."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from support import InProcessServer, free_port, greedy_reference, metric_values, wait_until
from zopilot_server.config import ServerConfig
from zopilot_server.generation.domain import GenerationRequest, SamplingParams
from zopilot_server.generation.engine import (
    ArenaBudget,
    BatchLimits,
    GenerationEngine,
    complete_generation,
)
from zopilot_server.generation.kv.prefix_cache import BLOCK_TOKENS, PrefixIndex
from zopilot_server.generation.loading.model_loader import load_model

B = BLOCK_TOKENS


# -- the index alone ---------------------------------------------------------------------
def test_longest_match_counts_whole_blocks_and_never_the_last_token() -> None:
    index = PrefixIndex(4, "model-a")
    prompt = list(range(100, 100 + 3 * B))
    index.claim(0, 0, private=False)
    index.extend(0, prompt)
    assert index.longest([*prompt, 7]).tokens == 3 * B  # type: ignore[union-attr]
    # The same prompt again: its last token must be computed, so one block less.
    assert index.longest(prompt).tokens == 2 * B  # type: ignore[union-attr]
    # Diverging inside block 2: only block 1 is shared.
    other = prompt[: B + 3] + [1] * (2 * B)
    assert index.longest(other).tokens == B  # type: ignore[union-attr]
    assert index.longest([1, 2, 3] * B) is None


def test_a_different_model_never_hits() -> None:
    a, b = PrefixIndex(2, "model-a|float32|none"), PrefixIndex(2, "model-a|float32|4bit")
    prompt = list(range(2 * B + 1))
    a.claim(0, 0, private=False)
    a.extend(0, prompt)
    assert a.chain(prompt) != b.chain(prompt)


def test_private_rows_leave_nothing_and_claims_truncate() -> None:
    index = PrefixIndex(3, "m")
    prompt = list(range(3 * B + 1))
    index.claim(0, 0, private=True)
    index.extend(0, prompt)
    assert index.longest(prompt) is None, "a private row's tokens are never indexed"
    index.released(0)
    index.claim(1, 0, private=False)
    index.extend(1, prompt)
    index.released(1)
    index.claim(1, B, private=False)  # a new row keeps one block of the cached content
    assert index.longest(prompt).tokens == B  # type: ignore[union-attr]
    assert index.lru([0, 1, 2]) in (0, 2), "an empty slot is evicted before a cached one"
    assert index.lru([1, 2]) == 2


def test_disabled_index_finds_nothing() -> None:
    index = PrefixIndex(2, "m", enabled=False)
    prompt = list(range(3 * B))
    index.claim(0, 0, private=False)
    index.extend(0, prompt)
    assert index.longest([*prompt, 1]) is None


# -- on real models ----------------------------------------------------------------------
def _engine(model_dir: Path, cache: Path, *, prefix_cache: bool = True, **kw: Any):
    budget = kw.pop("budget", ArenaBudget(memory_mib=64))
    loaded = load_model(ServerConfig(model=str(model_dir), cache_dir=str(cache)))
    return GenerationEngine(
        loaded, limits=BatchLimits(**kw), budget=budget, prefix_cache=prefix_cache
    )


def _request(engine: GenerationEngine, messages: list[dict], n: int = 10, **kw: Any):
    ids = engine.loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    kw.setdefault("min_new_tokens", n)
    return GenerationRequest(
        kw.pop("rid", "r"),
        tuple(ids),
        False,
        max_new_tokens=n,
        token_details=True,
        arrival=time.monotonic(),
        **kw,
    )


def _run(engine: GenerationEngine, *requests: GenerationRequest) -> list[Any]:
    async def go() -> list[Any]:
        return await asyncio.gather(*(complete_generation(engine, r) for r in requests))

    return asyncio.run(go())


def _ids(chunk: Any) -> list[int]:
    return [t.id for t in chunk.tokens]


def _reference(engine: GenerationEngine, request: GenerationRequest) -> list[int]:
    return greedy_reference(engine.loaded, request)


SYSTEM = (
    "You are a careful assistant for a shipping company. Answer in one short sentence, "
    "name the port if one is asked about, never invent a tracking number, and say so "
    "when you do not know. Ports we serve: Hamburg, Rotterdam, Antwerp, Le Havre, Genoa."
)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, model_cache_dir: Path):
    engine = _engine(tiny_model_dir, model_cache_dir, max_batch_size=3)
    yield engine
    engine.close()


def _chat(question: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def test_a_free_slot_holding_the_prefix_is_reused_without_a_copy(tiny) -> None:
    first = _request(tiny, _chat("Where is Hamburg?"))
    [done] = _run(tiny, first)
    assert done.completion.usage.cached_input_tokens == 0
    copies: list[Any] = []
    index = tiny.scheduler._runner.arena.prefix
    original = index.copy
    index.copy = lambda *a, **k: (copies.append(a), original(*a, **k))  # type: ignore[method-assign]
    try:
        second = _request(tiny, _chat("Where is Genoa?"), rid="2")
        [again] = _run(tiny, second)
    finally:
        del index.copy
    cached = again.completion.usage.cached_input_tokens
    shared = next(
        i for i, (a, b) in enumerate(zip(first.input_ids, second.input_ids, strict=False)) if a != b
    )
    assert cached == shared // B * B and cached > 3 * B  # whole blocks of the shared part
    assert not copies, "taken where it was: no prefix copied from another slot"
    assert _ids(again) == _reference(tiny, second)


def test_a_prefix_in_a_running_slot_is_copied(tiny) -> None:
    runner = tiny.scheduler._runner
    long = _request(tiny, _chat("Tell me about Rotterdam."), 120, rid="long")
    job_results: list[Any] = []

    async def go() -> None:
        task = asyncio.ensure_future(complete_generation(tiny, long))
        started = await asyncio.to_thread(
            wait_until, lambda: any(r.produced > 2 for r in runner.rows.values())
        )
        assert started
        other = _request(tiny, _chat("And Antwerp?"), rid="other")
        job_results.append((other, await complete_generation(tiny, other)))
        job_results.append((long, await task))

    # Evict earlier cached copies of the system prompt: only the live row holds it.
    runner.arena.prefix._owners.clear()
    asyncio.run(go())
    (other, got), (_, long_done) = job_results
    assert got.completion.usage.cached_input_tokens > 3 * B
    assert _ids(got) == _reference(tiny, other)
    assert _ids(long_done) == _reference(tiny, long)


def test_an_evicted_prefix_is_recomputed_and_text_is_unchanged(
    tiny_model_dir: Path, model_cache_dir: Path
) -> None:
    engine = _engine(tiny_model_dir, model_cache_dir, max_batch_size=2)
    try:
        first = _request(engine, _chat("Where is Hamburg?"))
        _run(engine, first)
        # Two other conversations take both slots: the cached system prompt is evicted.
        _run(
            engine,
            _request(engine, [{"role": "user", "content": "x " * 60}], rid="a"),
            _request(engine, [{"role": "user", "content": "y " * 60}], rid="b"),
        )
        again = _request(engine, _chat("Where is Genoa?"), rid="again")
        [done] = _run(engine, again)
        assert done.completion.usage.cached_input_tokens == 0
        assert _ids(done) == _reference(engine, again)
    finally:
        engine.close()


def test_a_private_request_neither_reads_nor_leaves_cached_prefixes(tiny) -> None:
    _run(tiny, _request(tiny, _chat("Where is Hamburg?")))
    private = _request(tiny, _chat("Where is Genoa?"), rid="p", private=True)
    [done] = _run(tiny, private)
    assert done.completion.usage.cached_input_tokens == 0
    assert _ids(done) == _reference(tiny, private)
    secret = [{"role": "user", "content": "my secret invoice " * 12}]
    _run(tiny, _request(tiny, secret, rid="s", private=True))
    [after] = _run(tiny, _request(tiny, secret, rid="t"))
    assert after.completion.usage.cached_input_tokens == 0


def test_seeded_sampling_is_the_same_with_and_without_reuse(
    tiny, tiny_model_dir: Path, model_cache_dir: Path
) -> None:
    sampling = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=11)
    warm = _request(tiny, _chat("Warm up the cache."))
    _run(tiny, warm)
    request = _request(tiny, _chat("Where is Genoa?"), 16, rid="s", sampling=sampling)
    [reused] = _run(tiny, request)
    assert reused.completion.usage.cached_input_tokens > 0
    cold = _engine(tiny_model_dir, model_cache_dir, prefix_cache=False, max_batch_size=2)
    try:
        [fresh] = _run(cold, request)
        assert fresh.completion.usage.cached_input_tokens == 0
        assert _ids(reused) == _ids(fresh)
    finally:
        cold.close()


def test_many_distinct_long_prompts_thrash_the_cache_and_all_complete(tiny) -> None:
    requests = [
        _request(tiny, [{"role": "user", "content": f"{i} " * 150}], 4, rid=str(i))
        for i in range(8)
    ]
    results = _run(tiny, *requests)
    assert [r.completion.usage.generated_tokens for r in results] == [4] * 8
    assert all(r.completion.usage.cached_input_tokens <= 2 * B for r in results)
    assert wait_until(lambda: tiny.load().running == 0)


@pytest.mark.slow
def test_later_turns_of_a_conversation_come_from_the_cache(
    smollm2_dir: Path, model_cache_dir: Path
) -> None:
    """SmolLM2, a 4-turn chat whose history is re-sent each turn: every later turn reports
    at least 80% of its prompt cached, and answers as transformers does without a cache."""
    engine = _engine(smollm2_dir, model_cache_dir, max_batch_size=2)
    try:
        messages = [{"role": "system", "content": SYSTEM}]
        for turn, question in enumerate(
            ["Where is Hamburg?", "And Genoa?", "Which one is further south?", "Thanks!"]
        ):
            messages.append({"role": "user", "content": question})
            request = _request(engine, messages, 24, rid=str(turn), min_new_tokens=0)
            [done] = _run(engine, request)
            usage = done.completion.usage
            if turn:
                assert usage.cached_input_tokens >= 0.8 * usage.input_tokens, (turn, usage)
            assert _ids(done) == _reference(engine, request)[: len(done.tokens)]
            messages.append({"role": "assistant", "content": done.text})
    finally:
        engine.close()


def test_prefix_metrics_and_model_info(tiny_config: ServerConfig) -> None:
    import grpc
    from zopilot_client.pb import generation_pb2 as pb
    from zopilot_client.pb import generation_pb2_grpc

    port = free_port()
    server = InProcessServer(dataclasses.replace(tiny_config, metrics_port=port))

    def scrape() -> dict[str, float]:
        return metric_values(port, "zopilot_prefix_cache")

    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).kv_cache
            assert info.prefix_cache and info.prefix_block_tokens == B
            before = scrape()
            request = pb.GenerateRequest(
                messages=[
                    pb.ChatMessage(role="system", content=SYSTEM),
                    pb.ChatMessage(role="user", content="Where is Hamburg?"),
                ],
                max_new_tokens=3,
            )
            first = stub.Generate(request, timeout=30)
            second = stub.Generate(request, timeout=30)
            request.skip_prefix_cache = True
            private = stub.Generate(request, timeout=30)
        assert first.usage.cached_input_tokens == 0
        prompt = second.usage.input_tokens
        assert second.usage.cached_input_tokens == (prompt - 1) // B * B
        assert private.usage.cached_input_tokens == 0
        after = scrape()
        queries = after["zopilot_prefix_cache_queries_total"] - before.get(
            "zopilot_prefix_cache_queries_total", 0
        )
        hits = after["zopilot_prefix_cache_hits_total"] - before.get(
            "zopilot_prefix_cache_hits_total", 0
        )
        assert queries == 2 * prompt  # the private request is not counted
        assert hits == second.usage.cached_input_tokens
        assert 0 < after["zopilot_prefix_cache_hit_rate"] <= 1
    finally:
        server.stop()


def test_prefix_cache_off_is_reported_and_never_hits(tiny_config: ServerConfig) -> None:
    import grpc
    from zopilot_client.pb import generation_pb2 as pb
    from zopilot_client.pb import generation_pb2_grpc

    server = InProcessServer(
        dataclasses.replace(
            tiny_config, prefix_cache="off", max_step_stall=1.25, max_prefill_tokens=96
        )
    )
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).kv_cache
            assert not info.prefix_cache and info.prefix_block_tokens == 0
            # The step budget flags are reported as configured.
            assert info.packed_step and info.mode == "arena"
            assert (info.max_step_stall, info.max_prefill_tokens) == (1.25, 96)
            request = pb.GenerateRequest(prompt=SYSTEM, max_new_tokens=2)
            stub.Generate(request, timeout=30)
            assert stub.Generate(request, timeout=30).usage.cached_input_tokens == 0
    finally:
        server.stop()


@pytest.mark.slow
def test_a_document_asked_again_reuses_its_prefix(smollm2_server) -> None:
    """DocumentParse model field extraction puts the document before the schema, so a
    second schema on the same document prefills only the schema and the answer."""
    from documents_calls import INVOICE_SCHEMA, invoice_docx, parse

    engine = smollm2_server.running.engine
    before = engine.load().prefix_hit_tokens
    content = invoice_docx()
    parse(smollm2_server, content, "invoice.docx", json_schema=json.dumps(INVOICE_SCHEMA))
    first = engine.load().prefix_hit_tokens
    other = {"type": "object", "properties": {"total": {"type": "number"}}}
    reply = parse(smollm2_server, content, "invoice.docx", json_schema=json.dumps(other))
    assert reply.metadata.field_extraction == "model"
    # The system turn and the whole document (well over 100 tokens) came from the cache.
    assert engine.load().prefix_hit_tokens - first >= 100, (before, first)


def test_the_same_document_asked_twice_at_once_is_prefilled_once(tiny) -> None:
    """Two questions on one document arrive together: the second waits for the first's
    prefill of the shared part, copies it and computes only its own question."""
    document = "Shipping notice. " + "Berth seven opens at six; pilots board early. " * 30
    first = _request(tiny, [{"role": "user", "content": document + "\nWho boards?"}], rid="q1")
    second = _request(tiny, [{"role": "user", "content": document + "\nWhen?"}], rid="q2")
    a, b = _run(tiny, first, second)
    shared = next(
        i for i, (x, y) in enumerate(zip(first.input_ids, second.input_ids, strict=False)) if x != y
    )
    cached = sorted(
        [a.completion.usage.cached_input_tokens, b.completion.usage.cached_input_tokens]
    )
    assert cached[1] == shared // B * B and cached[1] > 10 * B
    assert _ids(a) == _reference(tiny, first) and _ids(b) == _reference(tiny, second)
