"""Speculative decoding on real models: the output never changes, only the speed.

Every test runs the same requests with speculation (n-gram drafts verified in the packed
step) and without it (``speculative=False``: one token a step) on one engine, and
asserts the texts are identical: greedy and seeded sampling, alone and in a busy
batch, across prefix reuse, stop sequences and max_new_tokens that end inside an
accepted draft, a JSON-schema constraint, and a slot filled to its last column. The
parts (proposer, policy, verification) are unit-tested in test_speculative_unit.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from model_builders import make_adapter
from support import InProcessServer, free_port, metric_values
from zopilot_client.pb import generation_pb2 as pb
from zopilot_client.pb import generation_pb2_grpc
from zopilot_server.config import ServerConfig
from zopilot_server.generation.domain import (
    Chunk,
    ConstraintKind,
    FinishReason,
    GenerationRequest,
    SamplingParams,
)
from zopilot_server.generation.engine import GenerationEngine, complete_generation
from zopilot_server.generation.kv.kv_arena import ArenaBudget
from zopilot_server.generation.loading.model_loader import load_model
from zopilot_server.generation.sched.scheduler import BatchLimits
from zopilot_server.generation.sched.speculation import DraftPolicy

PASSAGE = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the "
    "tower from 1887 to 1889."
)
COPY = f"Repeat this passage word for word:\n\n{PASSAGE}"
INVOICE = (
    "Invoice 2024-0318, dated 14 March 2024, from Northwind Traders Ltd to Contoso GmbH, "
    "total EUR 3,412.80."
)


class EagerDrafts(DraftPolicy):
    """Every decoding row drafts all it may, every step: what the step costs does not
    decide here (on a busy test machine it often would say "do not draft"), so each
    test exercises verification as much as it can."""

    def allowances(self, rows: Any, **_: Any) -> tuple[tuple[int, int], ...]:
        allowed = ((r.key, min(self.max_tokens, r.tokens_left - 1)) for r in rows)
        return tuple((key, n) for key, n in allowed if n > 0)


def _engine(
    model_dir: Path | None, cache: Path, adapters: Any = (), **limits: Any
) -> GenerationEngine:
    config = ServerConfig(model=str(model_dir or ""), cache_dir=str(cache))
    limits.setdefault("speculative_tokens", 8)
    budget = limits.pop("budget", ArenaBudget(memory_mib=128))
    engine = GenerationEngine(
        load_model(config), limits=BatchLimits(**limits), budget=budget, adapters=adapters
    )
    engine.scheduler._drafts = EagerDrafts(limits["speculative_tokens"])
    return engine


def _request(engine: GenerationEngine, text: str, n: int = 40, **kw: Any) -> GenerationRequest:
    ids = engine.loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True
    )
    return GenerationRequest(
        kw.pop("rid", "r"), tuple(ids), False, max_new_tokens=n, arrival=time.monotonic(), **kw
    )


def _run(engine: GenerationEngine, requests: list[GenerationRequest]) -> list[Chunk]:
    async def run() -> list[Chunk]:
        return await asyncio.gather(*(complete_generation(engine, r) for r in requests))

    return asyncio.run(run())


def _both(
    engine: GenerationEngine, requests: list[GenerationRequest]
) -> tuple[list[Chunk], list[Chunk]]:
    """The requests without speculation, then with it (each set run together)."""
    off = _run(engine, [_replace(r, speculative=False) for r in requests])
    on = _run(engine, requests)
    return off, on


def _replace(request: GenerationRequest, **changes: Any) -> GenerationRequest:
    import dataclasses

    return dataclasses.replace(request, arrival=time.monotonic(), **changes)


def _texts(chunks: list[Chunk]) -> list[tuple[str, FinishReason]]:
    return [(c.text, c.completion.finish_reason) for c in chunks]


def _drafted(chunks: list[Chunk]) -> tuple[int, int]:
    usage = [c.completion.usage for c in chunks]
    return sum(u.draft_tokens for u in usage), sum(u.accepted_draft_tokens for u in usage)


@pytest.fixture(scope="module")
def smollm2(model_cache_dir: Path) -> Iterator[GenerationEngine]:
    engine = _engine(None, model_cache_dir, max_batch_size=8)
    yield engine
    engine.close()


def test_a_copied_passage_is_identical_and_most_drafts_are_accepted(smollm2) -> None:
    off, on = _both(smollm2, [_request(smollm2, COPY, n=48)])
    assert _texts(on) == _texts(off)
    assert "Gustave Eiffel" in on[0].text  # the model does copy: drafts have text to match
    drafted, accepted = _drafted(on)
    assert drafted >= 10 and accepted >= drafted // 2, (drafted, accepted)
    assert _drafted(off) == (0, 0)
    assert on[0].completion.usage.generated_tokens == off[0].completion.usage.generated_tokens


def test_greedy_and_seeded_rows_in_a_busy_batch_are_unchanged(smollm2) -> None:
    sampled = [
        _request(smollm2, COPY, rid=f"s{seed}", sampling=SamplingParams(0.8, top_p=0.95, seed=seed))
        for seed in (1, 2)
    ]
    requests = [
        _request(smollm2, COPY, rid="copy"),
        _request(smollm2, "Write a short poem about the sea.", rid="chat"),
        _request(smollm2, f"{INVOICE}\nWhat is the total? Quote it.", rid="quote"),
        _request(smollm2, COPY, rid="pen", sampling=SamplingParams(repetition_penalty=1.2)),
        *sampled,
    ]
    off, on = _both(smollm2, requests)
    assert _texts(on) == _texts(off)
    assert _drafted(on)[1] > 0
    # The same seed gives the same text run to run, with speculation.
    again = _run(smollm2, [_replace(r) for r in sampled])
    assert _texts(again) == _texts(on[-2:])


def test_prefix_reuse_stop_sequences_and_max_new_tokens_inside_a_draft(smollm2) -> None:
    requests = [
        # The passage is copied: "Gustave" ends the text inside an accepted draft.
        _request(smollm2, COPY, rid="stop", stop_sequences=("Gustave",)),
        _request(
            smollm2, COPY, rid="stop-kept", stop_sequences=("Gustave",), include_stop_sequence=True
        ),
        # max_new_tokens falls in the middle of the copy, inside a draft.
        _request(smollm2, COPY, n=23, rid="length"),
    ]
    off, on = _both(smollm2, requests)
    assert _texts(on) == _texts(off)
    assert [c.completion.finish_reason for c in on] == [
        FinishReason.STOP_SEQUENCE,
        FinishReason.STOP_SEQUENCE,
        FinishReason.LENGTH,
    ]
    assert on[1].text.endswith("Gustave") and not on[0].text.endswith("Gustave")
    assert on[2].completion.usage.generated_tokens == 23
    # Again: the prompts are now in the prefix cache, and the text does not change.
    again = _run(smollm2, [_replace(r) for r in requests])
    assert _texts(again) == _texts(off)
    assert all(c.completion.usage.cached_input_tokens > 0 for c in again)


def test_a_json_schema_constrained_row_is_unchanged(smollm2) -> None:
    schema = {
        "type": "object",
        "properties": {
            "invoice": {"type": "string", "maxLength": 16},
            "seller": {"type": "string", "maxLength": 32},
        },
        "required": ["invoice", "seller"],
        "additionalProperties": False,
    }
    constraint = smollm2.constraints.compile(ConstraintKind.JSON_SCHEMA, json.dumps(schema))
    request = _request(
        smollm2,
        f"{INVOICE}\nReturn the invoice number and the seller as JSON.",
        n=80,
        constraint=constraint,
    )
    off, on = _both(smollm2, [request, _replace(request, request_id="second")])
    assert _texts(on) == _texts(off)
    document = json.loads(on[0].text)
    assert set(document) == {"invoice", "seller"}
    assert on[0].completion.finish_reason is FinishReason.CONSTRAINT


def test_a_draft_never_writes_past_the_slot(model_cache_dir) -> None:
    """Slots of 160 tokens: a request that fills its slot to the last column, copying
    (so drafts are proposed up to the edge), gives the text it gives without them."""
    engine = _engine(
        None, model_cache_dir, max_batch_size=2, budget=ArenaBudget(tokens_per_slot=160)
    )
    try:
        prompt = _request(engine, COPY, n=1)
        room = engine.arena.tokens_per_slot - len(prompt.input_ids)
        request = _request(engine, COPY, n=room, ignore_eos=True)
        off, on = _both(engine, [request])
        assert _texts(on) == _texts(off)
        assert on[0].completion.usage.generated_tokens == room
        assert _drafted(on)[0] > 0
    finally:
        engine.close()


def _oracle_drafts(
    engine: GenerationEngine, output_of: Callable[[GenerationRequest], list[int]]
) -> None:
    """Random weights seldom repeat an n-gram, so drafts come from the known output
    instead: right every time, except every third step a wrong third token (a rejection
    in the middle of a draft)."""
    runner = engine.scheduler._runner
    calls = itertools.count()

    def propose(key: int, limit: int) -> list[int]:
        row = runner.rows[key]
        draft = list(output_of(row.request)[row.produced : row.produced + limit])
        if next(calls) % 3 == 0 and len(draft) > 2:
            draft[2] = (draft[2] + 1) % runner.vocab
        return draft

    runner._propose = propose


@pytest.mark.parametrize("name", ["qwen2", "mistral", "phi3", "gpt_neox"])
def test_other_architectures_decode_the_same_with_drafts(
    name: str, model_dirs: Callable[[str], Path], model_cache_dir: Path
) -> None:
    """Verification is exact on every architecture the packed step serves; the mistral
    model's sliding window (24) is shorter than the prompts."""
    engine = _engine(model_dirs(name), model_cache_dir, max_batch_size=4)
    try:
        requests = [
            _request(engine, text, n=40, rid=str(i), min_new_tokens=40, token_details=True)
            for i, text in enumerate([COPY, "Tell me about the sea.", INVOICE])
        ]
        off = _run(engine, [_replace(r, speculative=False) for r in requests])
        outputs = {
            r.input_ids: [t.id for t in c.tokens] for r, c in zip(requests, off, strict=True)
        }
        _oracle_drafts(engine, lambda request: outputs[request.input_ids])
        on = _run(engine, [_replace(r) for r in requests])
        assert _texts(on) == _texts(off)
        for a, b in zip(on, off, strict=True):  # token details too: ids and logprobs
            assert [t.id for t in a.tokens] == [t.id for t in b.tokens]
            assert [t.logprob for t in a.tokens] == pytest.approx(
                [t.logprob for t in b.tokens], abs=1e-3
            )
        drafted, accepted = _drafted(on)
        assert 0 < accepted < drafted, (drafted, accepted)
    finally:
        engine.close()


def test_seeded_sampling_gives_the_same_text_with_drafts_for_every_seed(
    tiny_model_dir: Path, model_cache_dir: Path
) -> None:
    """The token distribution of a sampled row does not change with speculation: for 40
    seeds at temperature 1 (a flat distribution, where drafts are often rejected), the
    text with drafts is the text without them, token for token."""
    engine = _engine(tiny_model_dir, model_cache_dir, max_batch_size=8, max_queue=64)
    try:
        requests = [
            _request(engine, COPY, n=12, rid=f"s{seed}", token_details=True,
                     sampling=SamplingParams(1.0, top_k=50, seed=seed))
            for seed in range(40)
        ]  # fmt: skip
        off = _run(engine, [_replace(r, speculative=False) for r in requests])
        # Drafts: the greedy continuation, which sampling mostly does not follow.
        greedy = _run(engine, [_replace(r, sampling=SamplingParams()) for r in requests[:1]])
        _oracle_drafts(engine, lambda request: [t.id for t in greedy[0].tokens])
        on = _run(engine, [_replace(r) for r in requests])
        assert [[t.id for t in c.tokens] for c in on] == [[t.id for t in c.tokens] for c in off]
        assert len({c.text for c in on}) > 20  # the seeds do sample different texts
        assert _drafted(on)[0] > 0
    finally:
        engine.close()


def test_lora_rows_verify_drafts_through_their_adapter(
    tiny_model_dir: Path, model_cache_dir: Path, tmp_path: Path
) -> None:
    """Drafting rows' tokens go through their own adapter: rows with two adapters and the
    base, drafting in one step, give the text they give without drafts."""
    targets = ["q_proj", "v_proj", "down_proj"]
    made = {
        name: str(make_adapter(tiny_model_dir, tmp_path / name, rank=8, targets=targets, seed=seed))
        for seed, name in enumerate(["a", "b"], start=1)
    }
    engine = _engine(tiny_model_dir, model_cache_dir, adapters=list(made.items()), max_batch_size=4)
    try:
        requests = [
            _request(engine, COPY, n=32, rid=name or "base", min_new_tokens=32, token_details=True,
                     adapter=engine.adapters.get(name) if name else None)
            for name in ["a", "b", ""]
        ]  # fmt: skip
        off = _run(engine, [_replace(r, speculative=False) for r in requests])
        assert len({c.text for c in off}) == 3, "the adapters change the text"
        outputs = {r.adapter: [t.id for t in c.tokens] for r, c in zip(requests, off, strict=True)}
        _oracle_drafts(engine, lambda request: outputs[request.adapter])
        on = _run(engine, [_replace(r) for r in requests])
        assert _texts(on) == _texts(off)
        drafted, accepted = _drafted(on)
        assert 0 < accepted < drafted
    finally:
        engine.close()


def test_the_serial_runner_does_not_speculate(
    model_dirs: Callable[[str], Path], model_cache_dir: Path
) -> None:
    config = ServerConfig(model=str(model_dirs("gpt2")), cache_dir=str(model_cache_dir))
    engine = GenerationEngine(load_model(config), limits=BatchLimits(speculative_tokens=8))
    try:
        if engine.arena.mode != "serial":
            pytest.skip("this transformers serves GPT-2 in the packed step")
        assert engine.limits.speculative_tokens == 0 and engine.speculative_ngram is None
        [chunk] = _run(engine, [_request(engine, COPY, n=8, min_new_tokens=8)])
        assert chunk.completion.usage.generated_tokens == 8
        assert _drafted([chunk]) == (0, 0)
    finally:
        engine.close()


# -- through the server: what a user sees --------------------------------------------------


@pytest.fixture(scope="module")
def spec_server(smollm2_dir: Path, model_cache_dir: Path) -> Iterator[InProcessServer]:
    port = free_port()
    server = InProcessServer(
        ServerConfig(cache_dir=str(model_cache_dir), metrics_port=port, speculative_tokens=6)
    )
    server.metrics_port = port  # type: ignore[attr-defined]
    server.running.engine.scheduler._drafts = EagerDrafts(6)
    yield server
    server.stop()


def test_usage_metrics_and_model_info_report_speculation(spec_server: InProcessServer) -> None:
    with grpc.insecure_channel(spec_server.target) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).kv_cache
        assert (
            info.speculative_tokens,
            info.speculative_ngram_min,
            info.speculative_ngram_max,
        ) == (
            6,
            2,
            4,
        )
        message = pb.GenerateRequest(
            messages=[pb.ChatMessage(role="user", content=COPY)], max_new_tokens=40
        )
        on = stub.Generate(message, timeout=120)
        off_message = pb.GenerateRequest()
        off_message.CopyFrom(message)
        off_message.skip_speculation = True
        off = stub.Generate(off_message, timeout=120)
        assert on.text == off.text
        assert on.usage.draft_tokens > 0
        assert 0 < on.usage.accepted_draft_tokens <= on.usage.draft_tokens
        assert (off.usage.draft_tokens, off.usage.accepted_draft_tokens) == (0, 0)
        stream = list(stub.GenerateStream(message, timeout=120))
        assert "".join(c.text for c in stream) == on.text
        assert stream[-1].usage.draft_tokens > 0
    values = metric_values(spec_server.metrics_port, "zopilot_spec_decode")
    drafted = next(v for k, v in values.items() if "num_draft_tokens_total" in k)
    accepted = next(v for k, v in values.items() if "num_accepted_tokens_total" in k)
    rate = next(v for k, v in values.items() if "acceptance_rate" in k)
    assert drafted >= on.usage.draft_tokens + stream[-1].usage.draft_tokens
    assert rate == pytest.approx(accepted / drafted)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"speculative_tokens": -1}, "--speculative-tokens"),
        ({"speculative_tokens": 65}, "--speculative-tokens"),
        ({"speculative_ngram_min": 0}, "--speculative-ngram-min"),
        ({"speculative_ngram_min": 5, "speculative_ngram_max": 4}, "--speculative-ngram-min"),
        ({"speculative_ngram_max": 17}, "--speculative-ngram-max"),
    ],
)
def test_bad_speculation_flags_are_refused_at_start(flags: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig(**flags).validated()


def test_the_vllm_worker_contract_reports_drafted_and_accepted_tokens(
    spec_server: InProcessServer,
) -> None:
    """Gateways read speculation from VllmEngine's GenerateComplete (vLLM's names)."""
    from smg_grpc_proto.generated import vllm_engine_pb2_grpc as vpb_grpc
    from vllm_calls import complete_of, generate, greedy

    with grpc.insecure_channel(spec_server.target) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        message = pb.GenerateRequest(
            messages=[pb.ChatMessage(role="user", content=COPY)],
            max_new_tokens=40,
            skip_speculation=True,
            return_token_details=True,
        )
        plain = stub.Generate(message, timeout=120)
        tokenizer = spec_server.running.engine.loaded.tokenizer  # the gateway templates
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": COPY}], add_generation_prompt=True
        )
        complete = complete_of(
            generate(vpb_grpc.VllmEngineStub(channel), ids, greedy(max_tokens=40))
        )
    assert list(complete.output_ids)[: len(plain.tokens)] == [t.id for t in plain.tokens]
    assert complete.spec_draft_tokens > 0
    assert 0 < complete.spec_accepted_tokens <= complete.spec_draft_tokens
