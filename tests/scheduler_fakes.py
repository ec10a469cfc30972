"""Fakes for the continuous-batching scheduler: a runner that records which rows every
step carried (optionally slowed, gated or failing) and a streamer that records what a
row was sent. Used by unit/generation's scheduler tests through ``harness_factory``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence

from zopilot_server.generation.domain import FinishReason, GenerationRequest, TokenDetail
from zopilot_server.generation.sched.plan import ArenaInfo, Plan, PrefillChunk, RowSpec, Step
from zopilot_server.generation.sched.scheduler import BatchLimits, Job, Scheduler


class FakeRunner:
    """Emits token ``key * 1000 + n`` for a row's n-th token; one step takes ``step_s``
    plus ``token_s`` per prompt token it carries. A prompt of length L is prefilled in
    chunks the scheduler plans; ``decode_batches`` / ``prefill_plans`` record each
    step's decoding rows and chunks (one step may carry both)."""

    def __init__(
        self,
        step_s: float = 0.002,
        token_s: float = 0.0,
        slots: int = 64,
        slot_tokens: int = 1_000_000,
        prefix_block: int = 0,
    ) -> None:
        self.step_s = step_s
        self.token_s = token_s  # what each prompt token adds to a step
        self.plans: list[Plan] = []
        self.info = ArenaInfo(
            "arena", slots, slot_tokens, 0, prefix_cache=bool(prefix_block),
            prefix_block_tokens=prefix_block,
        )  # fmt: skip
        self.reused: dict[int, int] = {}
        self.decode_batches: list[list[int]] = []
        self.prefill_groups: list[list[int]] = []
        self.prefill_plans: list[list[PrefillChunk]] = []
        self.fail_next: BaseException | None = None
        self.fail_prefill: BaseException | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()
        self._rows: dict[int, int] = {}
        self._prompts: dict[int, int] = {}
        self.cached_for: Callable[[int], int] = lambda prompt_len: 0  # prefix-cache hits

    @property
    def kv_tokens_used(self) -> int:
        return sum(self._prompts.values()) + sum(self._rows.values())

    def add(self, specs: Sequence[RowSpec]) -> dict[int, int]:
        self.prefill_groups.append([s.key for s in specs])
        for spec in specs:
            self._prompts[spec.key] = len(spec.request.input_ids)
        return {s.key: self.cached_for(len(s.request.input_ids)) for s in specs}

    def step(self, plan: Plan) -> list[Step]:
        self.plans.append(plan)
        self._tick(plan)
        if plan.chunks and self.fail_prefill is not None:
            exc, self.fail_prefill = self.fail_prefill, None
            raise exc
        steps = []
        for key in plan.decode:
            n = self._rows[key]
            steps.append(Step(key, key * 1000 + n, TokenDetail(key * 1000 + n, "t", -0.5)))
            self._rows[key] = n + 1
        for chunk in plan.chunks:
            if chunk.end == self._prompts[chunk.key]:
                self._rows[chunk.key] = 1
                steps.append(Step(chunk.key, chunk.key * 1000))
        if plan.decode:
            self.decode_batches.append(sorted(plan.decode))
        if plan.chunks:
            self.prefill_plans.append(list(plan.chunks))
        return steps

    def reuse(self, key: int) -> int:
        return self.reused.get(key, 0)

    def remove(self, keys: Collection[int]) -> None:
        for key in keys:
            self._rows.pop(key, None)
            self._prompts.pop(key, None)

    def release_memory(self) -> None:
        pass

    def _tick(self, plan: Plan) -> None:
        if not self.gate.is_set():
            self.held.set()  # the scheduler thread is now waiting inside a step
        self.gate.wait(10)
        time.sleep(self.step_s + self.token_s * plan.prompt_tokens)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc


class FakeStreamer:
    def __init__(self, job: Job) -> None:
        self.job = job
        self.tokens: list[int] = []
        self.details: list[TokenDetail] = []
        self.reason: FinishReason | None = None
        self.done = threading.Event()

    def put_token(self, token_id: int, detail: TokenDetail | None = None) -> None:
        self.tokens.append(token_id)
        if detail is not None:
            self.details.append(detail)

    def end(self) -> None:
        self.complete(self.job.control.finish_reason or FinishReason.LENGTH)

    def complete(self, reason: FinishReason) -> None:
        self.reason = reason
        self.done.set()


class Harness:
    def __init__(self, limits: BatchLimits, runner: FakeRunner | None = None) -> None:
        self.runner = runner or FakeRunner()
        self.streamers: dict[str, FakeStreamer] = {}
        self.failures: dict[str, BaseException] = {}
        self.scheduler = Scheduler(self.runner, self._make, limits)

    def _make(self, job: Job) -> FakeStreamer:
        streamer = FakeStreamer(job)
        self.streamers[job.request.request_id] = streamer
        return streamer

    def submit(self, rid: str, max_new: int = 5, prompt_len: int = 3, **kw) -> Job:
        request = GenerationRequest(
            request_id=rid,
            input_ids=tuple(range(prompt_len)),
            input_truncated=False,
            max_new_tokens=max_new,
            arrival=time.monotonic(),
            **kw,
        )

        def sink(item: object) -> None:
            if isinstance(item, BaseException):
                self.failures[rid] = item

        return self.scheduler.submit(request, sink)

    def finished(self, rid: str) -> FinishReason | None:
        streamer = self.streamers.get(rid)
        return streamer.reason if streamer else None
