"""The KV arena and its runner on real models, in process (no gRPC): greedy tokens equal
transformers' own ``generate`` alone, in a busy batch and across joins, leaves and slot
moves; architectures the arena cannot serve fall back to the serial runner; a fault in
any phase of a step ends only the rows it must and changes no survivor's text."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from packaging.version import Version
from support import greedy_reference, wait_until
from zopilot_server.config import ServerConfig
from zopilot_server.generation.domain import GenerationRequest, OutOfMemory, RequestTooLong
from zopilot_server.generation.engine import (
    ArenaBudget,
    BatchLimits,
    GenerationEngine,
    complete_generation,
)
from zopilot_server.generation.kv.kv_arena import KVArena
from zopilot_server.generation.loading.compat import transformers_version
from zopilot_server.generation.loading.model_loader import load_model
from zopilot_server.generation.model.sampling import TokenChooser

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea and the wind over the waves.",
    "2+2=",
    "List three colours.",
]


def _engine(model_dir: Path, cache: Path, **limits: Any) -> GenerationEngine:
    budget = limits.pop("budget", ArenaBudget(memory_mib=64))
    loaded = load_model(ServerConfig(model=str(model_dir), cache_dir=str(cache)))
    return GenerationEngine(loaded, limits=BatchLimits(**limits), budget=budget)


def _request(engine: GenerationEngine, text: str, n: int = 12, rid: str = "r", **kw: Any):
    tokenizer = engine.loaded.tokenizer
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True
    )
    kw.setdefault("min_new_tokens", n)  # no EOS: every run makes all n tokens
    return GenerationRequest(
        rid, tuple(ids), False, max_new_tokens=n, token_details=True, arrival=time.monotonic(), **kw
    )


def _tokens(engine: GenerationEngine, requests: list[GenerationRequest]) -> list[list[int]]:
    async def run() -> list[Any]:
        return await asyncio.gather(*(complete_generation(engine, r) for r in requests))

    return [[t.id for t in chunk.tokens] for chunk in asyncio.run(run())]


# GPT-2 takes a legacy tuple cache in transformers 4.45 (served serially); the quantization
# suite's 4.57 gives it a Cache and SDPA attention, so the packed step serves it there.
GPT2_MODE = "serial" if transformers_version() < Version("4.50") else "arena"


def _reference(engine: GenerationEngine, request: GenerationRequest) -> list[int]:
    return greedy_reference(engine.loaded, request)


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("qwen2", "arena"),
        ("mistral", "arena"),
        ("phi3", "arena"),
        ("gpt2", GPT2_MODE),
        ("gpt_neox", "arena"),
    ],
)
def test_each_architecture_decodes_as_transformers_does_alone_and_batched(
    name: str, mode: str, model_dirs: Callable[[str], Path], model_cache_dir: Path
) -> None:
    engine = _engine(model_dirs(name), model_cache_dir, max_batch_size=4)
    try:
        assert engine.arena.mode == mode, engine.arena.reason
        n = 30 if name == "mistral" else 12  # past the 24-token window
        requests = [_request(engine, p, n, rid=str(i)) for i, p in enumerate(PROMPTS)]
        want = [_reference(engine, r) for r in requests]
        alone = [_tokens(engine, [r])[0] for r in requests]
        together = _tokens(engine, requests)
        assert alone == want
        assert together == want
    finally:
        engine.close()


@pytest.mark.skipif(GPT2_MODE == "arena", reason="this transformers' GPT-2 takes a Cache")
def test_gpt2_is_served_serially_and_says_why(model_dirs, model_cache_dir) -> None:
    engine = _engine(model_dirs("gpt2"), model_cache_dir, max_batch_size=8)
    try:
        assert engine.arena.slots == 1
        assert "Cache" in engine.arena.reason or "differs" in engine.arena.reason
        assert engine.load().kv_slots == 1
    finally:
        engine.close()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, model_cache_dir: Path):
    engine = _engine(tiny_model_dir, model_cache_dir, max_batch_size=3, max_queue=16)
    yield engine
    engine.close()


def test_rows_join_and_leave_around_gaps_without_changing_text(tiny) -> None:
    """Short rows end first and free slots between running rows; nobody moves (a freed
    slot keeps its prefix cache), the queued rows take freed slots and are prefilled in
    the same forwards as the decoding rows (their first token computed beside others'),
    and every row, decoding in runs of slots with gaps, keeps exactly its text."""
    lengths = [40, 6, 30, 9, 25, 12, 7]
    requests = [
        _request(tiny, PROMPTS[i % 4] + " " * i, n, rid=str(i)) for i, n in enumerate(lengths)
    ]
    want = [_reference(tiny, r) for r in requests]
    arena: KVArena = tiny.scheduler._runner.arena
    gapped: list[list[int]] = []
    packed: list[Any] = []  # steps where a prompt completed beside decoding rows
    original = tiny.scheduler._runner.step

    def watching_step(plan: Any) -> Any:
        slots = sorted(arena.slot_of[k] for k in plan.decode)
        if slots and slots[-1] - slots[0] + 1 > len(slots):
            gapped.append(slots)
        runner = tiny.scheduler._runner
        if plan.decode and any(
            c.end == len(runner.rows[c.key].request.input_ids) for c in plan.chunks
        ):
            packed.append(plan)
        return original(plan)

    tiny.scheduler._runner.step = watching_step
    try:
        assert _tokens(tiny, requests) == want
    finally:
        del tiny.scheduler._runner.step
    assert gapped, "some steps decoded rows with a free slot between them"
    assert packed, "a queued row's first token came from a step where others decoded"
    # The last row leaves the arena just after its final chunk went out.
    assert wait_until(lambda: not arena.slot_of)
    assert tiny.load().kv_tokens_used == 0


def test_a_request_that_fills_its_slot_exactly_works_and_one_more_token_is_refused(
    tiny_model_dir: Path, model_cache_dir: Path
) -> None:
    engine = _engine(
        tiny_model_dir, model_cache_dir, max_batch_size=2, budget=ArenaBudget(64, 0.9, 64)
    )
    try:
        assert engine.arena.tokens_per_slot == 64 and engine.loaded.max_context_length == 64
        request = _request(engine, "Hi", 1)
        n = 64 - len(request.input_ids)
        full = _request(engine, "Hi", n)
        assert _tokens(engine, [full]) == [_reference(engine, full)]
        with pytest.raises(RequestTooLong):
            engine.submit(_request(engine, "Hi", n + 1), lambda item: None)
    finally:
        engine.close()


class _Fault:
    """Raise ``exc`` the ``nth`` time ``target.name`` is called, once."""

    def __init__(self, target: Any, name: str, exc: BaseException, nth: int = 1) -> None:
        self.target, self.name, self.exc, self.left = target, name, exc, nth
        self.original = getattr(target, name)
        self.fired = threading.Event()
        setattr(target, name, self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.left -= 1
        if self.left == 0:
            self.fired.set()
            raise self.exc
        return self.original(*args, **kwargs)

    def restore(self) -> None:
        delattr(self.target, self.name) if self.name in vars(self.target) else None


def _oom() -> BaseException:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@pytest.mark.parametrize(
    "phase",
    ["decode forward", "token choice", "prefill forward"],
)
def test_a_fault_in_any_phase_ends_only_its_victim_and_survivors_text_is_exact(
    tiny, phase: str, tiny_model_dir: Path, model_cache_dir: Path
) -> None:
    runner = tiny.scheduler._runner
    requests = [_request(tiny, p, 24, rid=str(i)) for i, p in enumerate(PROMPTS[:3])]
    want = [_reference(tiny, r) for r in requests]
    target, name, nth = {
        "decode forward": (runner, "_logits", 8),
        "token choice": (runner._chooser, "choose", 6),
        "prefill forward": (runner, "_logits", 1),
    }[phase]
    fault = _Fault(target, name, _oom(), nth)

    async def run() -> list[Any]:
        return await asyncio.gather(
            *(complete_generation(tiny, r) for r in requests), return_exceptions=True
        )

    try:
        results = asyncio.run(run())
    finally:
        fault.restore()
    assert fault.fired.is_set()
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    if phase == "prefill forward":
        # A step with prompt chunks that runs out of memory is retried with smaller
        # chunks: nobody fails.
        assert failed == []
    else:
        assert len(failed) == 1 and isinstance(results[failed[0]], OutOfMemory)
    for i, result in enumerate(results):
        if i not in failed:
            assert [t.id for t in result.tokens] == want[i], f"row {i} after a {phase} fault"
    # The engine goes on: the next request works and nothing is left in the arena.
    assert _tokens(tiny, [requests[1]]) == [want[1]]
    assert wait_until(lambda: not runner.arena.slot_of)


def _chooser_draws(request_kw: dict[str, Any], logits: list[float], draws: int = 400) -> list[int]:
    """Tokens drawn for one row with the given sampling parameters, over many seeds."""
    from zopilot_server.generation.domain import SamplingParams
    from zopilot_server.generation.model.sampling import new_row

    chooser = TokenChooser(tokenizer=None, eos_token_ids=[0])
    out = []
    min_new = request_kw.pop("min_new_tokens", 0)
    seen = request_kw.pop("seen", ())
    for seed in range(draws):
        sampling = SamplingParams(seed=seed, **request_kw)
        request = GenerationRequest(
            "r", tuple(seen), False, max_new_tokens=4, min_new_tokens=min_new, sampling=sampling
        )
        row = new_row(0, request, len(logits), torch.device("cpu"))
        [step] = chooser.choose([row], torch.tensor([logits]))
        out.append(step.token_id)
    return out


LOGITS = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5]


def test_top_k_keeps_only_the_k_likeliest_tokens() -> None:
    assert set(_chooser_draws({"temperature": 1.0}, LOGITS)) > {0, 1}
    assert set(_chooser_draws({"temperature": 1.0, "top_k": 2}, LOGITS)) == {0, 1}


def test_top_p_keeps_the_smallest_set_over_p() -> None:
    # softmax(LOGITS): 0.36, 0.22, 0.13, 0.08, 0.05, 0.03 -> top_p 0.5 keeps tokens 0, 1
    assert set(_chooser_draws({"temperature": 1.0, "top_p": 0.5}, LOGITS)) == {0, 1}
    assert len(set(_chooser_draws({"temperature": 1.0, "top_p": 0.95}, LOGITS))) >= 4


def test_temperature_sharpens_and_flattens() -> None:
    cold = _chooser_draws({"temperature": 0.2}, LOGITS).count(0)
    warm = _chooser_draws({"temperature": 1.0}, LOGITS).count(0)
    hot = _chooser_draws({"temperature": 5.0}, LOGITS).count(0)
    assert cold > warm > hot


def test_repetition_penalty_lowers_seen_tokens() -> None:
    free = _chooser_draws({"temperature": 1.0, "seen": (0,)}, LOGITS).count(0)
    penalised = _chooser_draws(
        {"temperature": 1.0, "repetition_penalty": 3.0, "seen": (0,)}, LOGITS
    ).count(0)
    assert penalised < free / 2


def test_min_new_tokens_forbids_eos() -> None:
    assert 0 in _chooser_draws({"temperature": 1.0}, LOGITS)
    assert 0 not in _chooser_draws({"temperature": 1.0, "min_new_tokens": 2}, LOGITS)


def test_a_failed_choice_restores_the_generators() -> None:
    """A retried step draws what the failed one would have: seeds survive faults."""
    from zopilot_server.generation.domain import SamplingParams
    from zopilot_server.generation.model.sampling import new_row

    chooser = TokenChooser(tokenizer=None, eos_token_ids=[0])
    request = GenerationRequest(
        "r", (), False, max_new_tokens=4, sampling=SamplingParams(temperature=1.0, seed=3)
    )
    row = new_row(0, request, len(LOGITS), torch.device("cpu"))
    twin = new_row(0, request, len(LOGITS), torch.device("cpu"))
    original = chooser._pick

    def pick_then_fail(rows: Any, scores: Any) -> Any:
        original(rows, scores)  # the draw happens, then the step fails
        raise _oom()

    chooser._pick = pick_then_fail  # type: ignore[method-assign]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        chooser.choose([row], torch.tensor([LOGITS]))
    chooser._pick = original  # type: ignore[method-assign]
    got = [chooser.choose([row], torch.tensor([LOGITS]))[0].token_id for _ in range(20)]
    want = [chooser.choose([twin], torch.tensor([LOGITS]))[0].token_id for _ in range(20)]
    assert got == want


def test_model_info_and_metrics_report_the_arena(tiny_config: ServerConfig) -> None:
    """What GetModelInfo and /metrics say is what the arena holds, idle and busy."""
    import dataclasses

    import grpc
    from support import InProcessServer, free_port, metric_values
    from zopilot_client.pb import generation_pb2 as pb
    from zopilot_client.pb import generation_pb2_grpc

    port = free_port()
    server = InProcessServer(
        dataclasses.replace(
            tiny_config, metrics_port=port, max_batch_size=4, kv_cache_memory_mib=16
        )
    )

    def gauges() -> dict[str, float]:
        return metric_values(port, "zopilot_kv_cache")

    try:
        engine = server.running.engine
        assert engine is not None
        with grpc.insecure_channel(server.target) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).kv_cache
            # tiny Llama: 2 layers x 2 KV heads x 16 dims x K and V x 4 bytes = 512 B a token
            assert (info.mode, info.slots) == ("arena", 4)
            assert info.tokens_per_slot == 2048  # the model's whole context fits 16 MiB
            assert info.bytes == 4 * 2048 * 512 and info.serial_reason == ""
            idle = gauges()
            assert idle["zopilot_kv_cache_slots"] == 4 and idle["zopilot_kv_cache_slots_used"] == 0
            assert idle["zopilot_kv_cache_bytes"] == info.bytes
            assert idle["zopilot_kv_cache_tokens_budget"] == 4 * 2048
            stream = stub.GenerateStream(
                pb.GenerateRequest(prompt="Hello there", max_new_tokens=2000, ignore_eos=True),
                timeout=60,
            )
            next(stream)
            busy = gauges()
            assert busy["zopilot_kv_cache_slots_used"] == 1
            held = engine.scheduler._runner.arena.tokens_used
            assert (
                busy["zopilot_kv_cache_tokens_used"] >= 2
                and held >= busy["zopilot_kv_cache_tokens_used"]
            )
            stream.cancel()
        assert wait_until(lambda: gauges()["zopilot_kv_cache_slots_used"] == 0)
        assert gauges()["zopilot_kv_cache_tokens_used"] == 0
    finally:
        server.stop()


@pytest.mark.slow
def test_memory_stays_within_the_arena_under_a_mixed_load(
    smollm2_dir: Path, model_cache_dir: Path
) -> None:
    """A ~800-token prompt beside three short ones, twice over: the process grows by
    at most the arena plus a bounded overhead (one prefill pass's activations), and the
    gauges count what the arena holds."""
    import os

    engine = _engine(
        smollm2_dir, model_cache_dir, max_batch_size=4, budget=ArenaBudget(memory_mib=256)
    )
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * page

    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.01)

    try:
        arena = engine.arena
        assert arena.slots == 4 and arena.bytes <= 256 * 2**20
        long_text = " ".join(PROMPTS * 25)
        requests = [_request(engine, long_text, 8, rid="long", min_new_tokens=8)] + [
            _request(engine, p, 16, rid=str(i)) for i, p in enumerate(PROMPTS[:3])
        ]
        assert len(requests[0].input_ids) > 600
        before = rss()
        sampler = threading.Thread(target=sample)
        sampler.start()
        for _ in range(2):
            results = _tokens(engine, requests)
        done.set()
        sampler.join()
        assert [len(r) for r in results] == [8, 16, 16, 16]
        grown = peak[0] - before
        assert grown <= arena.bytes + 400 * 2**20, f"grew {grown / 2**20:.0f} MiB"
        assert engine.load().kv_tokens_budget == arena.slots * arena.tokens_per_slot
    finally:
        done.set()
        engine.close()


def test_token_details_report_the_processed_distribution(tiny_model_dir: Path) -> None:
    """logprobs and top-n alternatives are those of the scores after the processors and
    before the warpers: the penalised, EOS-masked distribution, not the sampled one."""
    from transformers import AutoTokenizer
    from zopilot_server.generation.domain import SamplingParams
    from zopilot_server.generation.model.sampling import new_row

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    chooser = TokenChooser(tokenizer, eos_token_ids=[0])
    sampling = SamplingParams(temperature=0.5, top_k=1, repetition_penalty=2.0, seed=1)
    request = GenerationRequest(
        "r", (1,), False, max_new_tokens=3, min_new_tokens=1, token_details=True,
        top_n_tokens=2, sampling=sampling,
    )  # fmt: skip
    row = new_row(0, request, len(LOGITS), torch.device("cpu"))
    [step] = chooser.choose([row], torch.tensor([LOGITS]))
    # EOS (0) masked by min_new_tokens, token 1 penalised 1.5 -> 0.75: token 2 leads.
    processed = torch.tensor([float("-inf"), 0.75, 1.0, 0.5, 0.0, -0.5])
    want = torch.log_softmax(processed, -1)
    assert step.token_id == 2  # top_k 1 after the temperature: the processed argmax
    assert step.detail is not None and step.detail.id == 2
    assert step.detail.logprob == pytest.approx(float(want[2]), abs=1e-5)
    assert [t.id for t in step.detail.top_tokens] == [2, 1]
    assert step.detail.top_tokens[1].logprob == pytest.approx(float(want[1]), abs=1e-5)


def test_penalty_makes_a_negative_seen_score_more_negative() -> None:
    scores = [-1.0, -1.0, -3.0, -3.0]
    free = _chooser_draws({"temperature": 1.0, "seen": (0,)}, scores).count(0)
    penalised = _chooser_draws(
        {"temperature": 1.0, "repetition_penalty": 2.0, "seen": (0,)}, scores
    ).count(0)
    assert penalised < free * 0.6


def test_greedy_and_seeded_rows_in_one_batch_choose_as_alone() -> None:
    from zopilot_server.generation.domain import SamplingParams
    from zopilot_server.generation.model.sampling import new_row

    chooser = TokenChooser(tokenizer=None, eos_token_ids=[0])

    def rows() -> list[Any]:
        greedy = GenerationRequest("g", (), False, max_new_tokens=8)
        seeded = GenerationRequest(
            "s", (), False, max_new_tokens=8,
            sampling=SamplingParams(temperature=1.3, top_p=0.9, top_k=4, seed=5),
        )  # fmt: skip
        return [
            new_row(i, r, len(LOGITS), torch.device("cpu")) for i, r in enumerate((greedy, seeded))
        ]

    together, alone = rows(), rows()
    batch = [
        [s.token_id for s in chooser.choose(together, torch.tensor([LOGITS] * 2))]
        for _ in range(30)
    ]
    solo = [chooser.choose([alone[1]], torch.tensor([LOGITS]))[0].token_id for _ in range(30)]
    assert [b[0] for b in batch] == [0] * 30  # greedy: the argmax every time
    assert [b[1] for b in batch] == solo
    assert len(set(solo)) > 1
