"""The continuous-batching scheduler with a fake runner: no model, no gRPC, no torch.

The fake runner records which rows every step carried, so these tests can assert the
batch membership a user's latency depends on: a request joins at the next step, a
finished or cancelled one leaves at once, and the limits hold.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Collection, Sequence

import pytest
from support import wait_until
from zopilot_server.generation.domain import FinishReason, GenerationRequest, TokenDetail
from zopilot_server.generation.sched.plan import ArenaInfo, Plan, PrefillChunk, RowSpec, Step
from zopilot_server.generation.sched.scheduler import (
    BatchLimits,
    EngineClosed,
    GenerationFailed,
    Job,
    QueueFull,
    RequestTooLong,
    Scheduler,
)


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


@pytest.fixture
def harness_factory():
    made: list[Harness] = []

    def make(runner: FakeRunner | None = None, **limits) -> Harness:
        harness = Harness(BatchLimits(**limits), runner)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.runner.gate.set()
        harness.scheduler.close(5)


def test_a_new_request_joins_the_running_batch_without_waiting_for_it_to_drain(
    harness_factory,
):
    h = harness_factory(max_batch_size=4)
    h.submit("long", max_new=200)
    assert wait_until(lambda: len(h.runner.decode_batches) >= 3)
    h.submit("short", max_new=4)
    assert wait_until(lambda: h.finished("short") is FinishReason.LENGTH)
    assert h.finished("long") is None, "the long request is still running"
    together = [b for b in h.runner.decode_batches if len(b) == 2]
    assert together, "the two requests shared decoding steps"
    assert h.streamers["short"].tokens == [1000, 1001, 1002, 1003]
    # The short one left at once: every later step carries the long one alone.
    last_shared = max(i for i, b in enumerate(h.runner.decode_batches) if len(b) == 2)
    assert wait_until(lambda: len(h.runner.decode_batches) > last_shared + 2)
    assert all(b == [0] for b in h.runner.decode_batches[last_shared + 1 :])


def test_waiting_arrivals_are_prefilled_together(harness_factory):
    runner = FakeRunner()
    runner.gate.clear()  # hold the first step so the others queue up behind it
    h = harness_factory(runner, max_batch_size=8)
    h.submit("a")
    assert wait_until(lambda: len(runner.prefill_groups) == 1)
    for rid in "bcd":
        h.submit(rid)
    runner.gate.set()
    assert wait_until(lambda: all(h.finished(r) for r in "abcd"))
    assert runner.prefill_groups == [[0], [1, 2, 3]]


def test_max_batch_size_bounds_every_step_and_the_rest_waits(harness_factory):
    h = harness_factory(max_batch_size=2, max_queue=8)
    for i in range(5):
        h.submit(f"r{i}", max_new=6)
    assert wait_until(lambda: all(h.finished(f"r{i}") for i in range(5)))
    assert max(len(b) for b in h.runner.decode_batches) == 2
    assert all(len(h.streamers[f"r{i}"].tokens) == 6 for i in range(5))


def test_kv_token_budget_bounds_the_batch(harness_factory):
    # Each request costs 3 prompt + 10 new = 13 tokens; a budget of 30 fits two.
    h = harness_factory(max_batch_size=8, max_batch_tokens=30, max_queue=8)
    for i in range(4):
        h.submit(f"r{i}", max_new=10)
    assert wait_until(lambda: all(h.finished(f"r{i}") for i in range(4)))
    assert max(len(b) for b in h.runner.decode_batches) == 2
    assert h.scheduler.load().kv_tokens_used == 0


def test_a_request_larger_than_the_budget_runs_alone_rather_than_never(harness_factory):
    h = harness_factory(max_batch_size=8, max_batch_tokens=10)
    h.submit("big", max_new=20)
    assert wait_until(lambda: h.finished("big") is FinishReason.LENGTH)


def test_queue_overflow_raises_queue_full_with_a_retry_hint(harness_factory):
    runner = FakeRunner()
    runner.gate.clear()
    h = harness_factory(runner, max_batch_size=1, max_queue=1)
    h.submit("running")
    assert wait_until(lambda: h.scheduler.active_count == 1)
    h.submit("queued")
    with pytest.raises(QueueFull) as info:
        h.submit("refused")
    assert info.value.retry_after_s > 0
    assert h.scheduler.load().waiting == 1


def test_cancelling_one_row_ends_only_that_row_within_a_step(harness_factory):
    h = harness_factory(max_batch_size=4)
    jobs = {rid: h.submit(rid, max_new=60) for rid in ("a", "b", "c")}
    assert wait_until(lambda: len(h.runner.decode_batches) >= 2)
    jobs["b"].cancel()
    assert wait_until(lambda: h.finished("b") is FinishReason.CANCELLED)
    assert wait_until(lambda: h.finished("a") is FinishReason.LENGTH)
    assert h.finished("c") is FinishReason.LENGTH
    assert len(h.streamers["a"].tokens) == 60 and len(h.streamers["c"].tokens) == 60
    assert len(h.streamers["b"].tokens) < 60


def test_a_time_limit_ends_its_row_only(harness_factory):
    h = harness_factory(max_batch_size=4, runner=FakeRunner(step_s=0.005))
    h.submit("limited", max_new=10_000, deadline=time.monotonic() + 0.1)
    h.submit("free", max_new=40)
    assert wait_until(lambda: h.finished("limited") is FinishReason.TIME_LIMIT)
    assert wait_until(lambda: h.finished("free") is FinishReason.LENGTH)
    assert len(h.streamers["free"].tokens) == 40


def test_cancelled_while_queued_never_reaches_the_runner(harness_factory):
    runner = FakeRunner()
    runner.gate.clear()
    h = harness_factory(runner, max_batch_size=1, max_queue=4)
    h.submit("running", max_new=3)
    assert wait_until(lambda: h.scheduler.active_count == 1)
    queued = h.submit("queued", max_new=3)
    queued.cancel()
    assert h.scheduler.queued_count == 0
    runner.gate.set()
    assert wait_until(lambda: h.finished("running") is FinishReason.LENGTH)
    assert "queued" not in h.streamers


def test_out_of_memory_evicts_the_newest_row_and_the_others_go_on(harness_factory):
    h = harness_factory(max_batch_size=4)
    h.submit("old", max_new=40)
    assert wait_until(lambda: len(h.runner.decode_batches) >= 2)
    h.submit("new", max_new=40)
    assert wait_until(lambda: any(len(b) == 2 for b in h.runner.decode_batches))

    class OutOfMemoryError(RuntimeError):
        pass

    h.runner.fail_next = OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    assert wait_until(lambda: "new" in h.failures)
    assert isinstance(h.failures["new"], GenerationFailed)
    assert wait_until(lambda: h.finished("old") is FinishReason.LENGTH)
    assert "old" not in h.failures and len(h.streamers["old"].tokens) == 40


def test_any_other_step_failure_ends_that_step_s_rows_with_the_error(harness_factory):
    h = harness_factory(max_batch_size=4)
    h.submit("a", max_new=50)
    h.submit("b", max_new=50)
    assert wait_until(lambda: len(h.runner.decode_batches) >= 2)
    h.runner.fail_next = RuntimeError("boom")
    assert wait_until(lambda: {"a", "b"} <= set(h.failures))
    assert "boom" in str(h.failures["a"])
    assert wait_until(lambda: h.scheduler.load().running == 0)
    h.submit("after", max_new=3)
    assert wait_until(lambda: h.finished("after") is FinishReason.LENGTH)


def test_drain_refuses_queued_at_once_and_ends_running_with_shutdown(harness_factory):
    h = harness_factory(max_batch_size=1, max_queue=4, runner=FakeRunner(step_s=0.005))
    h.submit("running", max_new=100_000)
    assert wait_until(lambda: len(h.runner.decode_batches) >= 2)
    h.submit("queued")
    h.scheduler.drain(0.2)
    assert isinstance(h.failures.get("queued"), EngineClosed)
    assert h.failures["queued"].retry_after_s
    with pytest.raises(EngineClosed, match="draining"):
        h.submit("late")
    assert wait_until(lambda: h.finished("running") is FinishReason.SHUTDOWN)
    assert h.streamers["running"].tokens, "what was generated is delivered"


def test_drain_ends_rows_still_inside_a_step_at_the_deadline(harness_factory):
    """A step that outlasts the drain deadline (here: held until released) does not hold
    back the final chunk: the row is completed from outside the step, and the loop
    drops it once the step returns."""
    h = harness_factory(max_batch_size=2)
    h.submit("slow", max_new=100_000)
    assert wait_until(lambda: len(h.runner.decode_batches) >= 1)
    h.runner.gate.clear()
    assert h.runner.held.wait(5)  # the scheduler thread is inside a step now
    h.scheduler.drain(0.05)
    assert wait_until(lambda: h.finished("slow") is FinishReason.SHUTDOWN, timeout=5)
    assert h.runner.held.is_set() and not h.runner.gate.is_set(), "ended mid-step"
    h.runner.gate.set()
    assert wait_until(lambda: h.scheduler.active_count == 0, timeout=5)


def test_a_later_drain_only_brings_the_deadline_closer(harness_factory):
    h = harness_factory(max_batch_size=1, runner=FakeRunner(step_s=0.005))
    h.submit("running", max_new=100_000)
    assert wait_until(lambda: len(h.runner.decode_batches) >= 1)
    h.scheduler.drain(60)
    h.scheduler.drain(0.05)  # a second signal
    assert wait_until(lambda: h.finished("running") is FinishReason.SHUTDOWN, timeout=5)


def test_close_joins_the_scheduler_thread(harness_factory):
    h = harness_factory(max_batch_size=2)
    h.submit("a", max_new=100_000)
    assert wait_until(lambda: len(h.runner.decode_batches) >= 1)
    h.scheduler.close(5)
    assert h.finished("a") is FinishReason.SHUTDOWN
    assert not h.scheduler._thread.is_alive()


def test_prompt_chunks_ride_in_the_running_rows_decode_steps(harness_factory):
    runner = FakeRunner(step_s=0.03)  # prompt tokens cost ~nothing: the cap is the budget
    h = harness_factory(runner, max_batch_size=4, max_prefill_tokens=64)
    h.submit("running", prompt_len=300, max_new=400)
    assert wait_until(lambda: len(runner.decode_batches) >= 2)
    # The first request, with nobody decoding, was prefilled in one pass.
    assert runner.prefill_plans[0] == [PrefillChunk(0, 0, 300)]
    before = len(runner.plans)
    h.submit("long-prompt", prompt_len=200, max_new=2)
    assert wait_until(lambda: h.finished("long-prompt") is FinishReason.LENGTH)
    carrying = [p for p in runner.plans[before:] if p.chunks]
    # The first beside decoding rows is small (nothing learned yet); then the cap.
    assert [(c.start, c.end) for p in carrying for c in p.chunks] == [
        (0, 16), (16, 80), (80, 144), (144, 200)
    ]  # fmt: skip
    # One forward per step: every chunk went with the running row's decode token.
    assert all(p.decode == (0,) for p in carrying)
    assert h.finished("running") is None


@pytest.mark.parametrize("stall", [1.5, 3.0])
def test_a_step_s_prompt_tokens_keep_it_within_the_stall_factor(harness_factory, stall):
    """A decode step costs 40 ms and a prompt token 1 ms more: at most ``stall`` x 40 ms
    a step, so (stall - 1) x 40 prompt tokens."""
    runner = FakeRunner(step_s=0.04, token_s=0.001)
    h = harness_factory(runner, max_batch_size=4, max_prefill_tokens=512, max_step_stall=stall)
    h.submit("running", max_new=400)
    assert wait_until(lambda: len(runner.decode_batches) >= 4)
    h.submit("joining", prompt_len=600, max_new=1)
    assert wait_until(lambda: h.finished("joining") is FinishReason.LENGTH)
    widths = [p.prompt_tokens for p in runner.plans if p.decode and p.chunks][2:-1]
    want = (stall - 1) * 40
    assert widths and all(0.7 * want <= w <= 1.2 * want for w in widths), widths


def test_joins_never_starve_when_prefill_is_dear(harness_factory):
    runner = FakeRunner(step_s=0.001, token_s=0.002)
    h = harness_factory(runner, max_batch_size=4)
    h.submit("running", max_new=2000)
    assert wait_until(lambda: len(runner.decode_batches) >= 2)
    h.submit("joining", prompt_len=100, max_new=1)
    assert wait_until(lambda: h.finished("joining") is FinishReason.LENGTH)
    assert all(c.end - c.start >= 16 for [c] in runner.prefill_plans[1:-1])


def test_joiners_share_a_step_s_budget_oldest_first(harness_factory):
    runner = FakeRunner(step_s=0.02)  # prompt tokens cost ~nothing: the cap is the budget
    h = harness_factory(runner, max_batch_size=8, max_prefill_tokens=48)
    h.submit("first", max_new=400)
    assert wait_until(lambda: len(runner.decode_batches) >= 1)
    runner.gate.clear()  # let three arrivals queue up behind one step
    assert runner.held.wait(10)
    for rid in "abc":
        h.submit(rid, prompt_len=40, max_new=2)
    runner.gate.set()
    assert wait_until(lambda: all(h.finished(r) is FinishReason.LENGTH for r in "abc"))
    carrying = [p for p in runner.plans if p.decode and p.chunks]
    assert all(p.prompt_tokens <= 48 for p in carrying)
    assert any(len(p.chunks) > 1 for p in carrying), "two joiners shared a step"
    for plan in carrying:
        keys = [c.key for c in plan.chunks]
        assert keys == sorted(keys), "oldest first"
        # A younger joiner gets tokens only once every older one in the step is done.
        assert all(c.end == 40 for c in plan.chunks[:-1])
    spans = {
        k: [(c.start, c.end) for p in carrying for c in p.chunks if c.key == k] for k in (1, 2, 3)
    }
    for k, chunks in spans.items():  # each prompt computed once, in order, whole
        assert chunks[0][0] == 0 and chunks[-1][1] == 40
        assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks)), (k, chunks)


def test_the_budget_grows_to_whole_prompts_once_nobody_decodes(harness_factory):
    runner = FakeRunner()
    h = harness_factory(runner, max_batch_size=4, max_prefill_tokens=32)
    runner.gate.clear()
    h.submit("short", max_new=4)
    assert runner.held.wait(10)  # inside the short one's first step
    h.submit("long", prompt_len=1000, max_new=1)
    runner.gate.set()
    assert wait_until(lambda: h.finished("long") is FinishReason.LENGTH)
    chunks = [c for p in runner.plans for c in p.chunks if c.key == 1]
    assert chunks[0].end - chunks[0].start <= 32, "beside a decoding row: a chunk"
    assert chunks[-1].end == 1000 and chunks[-1].end - chunks[-1].start > 32, "then the rest"


def test_cancelling_a_request_mid_prefill_stops_its_chunks(harness_factory):
    runner = FakeRunner(step_s=0.005)
    h = harness_factory(runner, max_batch_size=4, max_prefill_tokens=16)
    h.submit("running", max_new=100_000)
    assert wait_until(lambda: len(runner.decode_batches) >= 1)
    job = h.submit("joining", prompt_len=100_000, max_new=2)
    assert wait_until(lambda: len(runner.prefill_plans) >= 4)
    job.cancel()
    assert wait_until(lambda: h.finished("joining") is FinishReason.CANCELLED)
    planned = len(runner.prefill_plans)
    assert wait_until(lambda: len(runner.decode_batches) >= planned + 5)
    assert len(runner.prefill_plans) == planned, "no chunk of the cancelled prompt is computed"
    assert h.finished("running") is None and h.streamers["joining"].tokens == []


def test_admission_is_bounded_by_the_arena_slots(harness_factory):
    h = harness_factory(FakeRunner(slots=2), max_batch_size=8, max_queue=8)
    for i in range(5):
        h.submit(f"r{i}", max_new=6)
    assert wait_until(lambda: all(h.finished(f"r{i}") for i in range(5)))
    assert max(len(b) for b in h.runner.decode_batches) == 2
    assert h.scheduler.load().kv_slots == 2


def test_a_request_larger_than_a_slot_is_refused_at_once(harness_factory):
    h = harness_factory(FakeRunner(slot_tokens=20))
    with pytest.raises(RequestTooLong) as info:
        h.submit("big", prompt_len=10, max_new=11)
    assert info.value.tokens == 21 and info.value.limit == 20
    h.submit("fits", prompt_len=10, max_new=10)
    assert wait_until(lambda: h.finished("fits") is FinishReason.LENGTH)


def test_out_of_memory_in_prefill_retries_smaller_before_evicting(harness_factory):
    class OutOfMemoryError(RuntimeError):
        pass

    runner = FakeRunner()
    h = harness_factory(runner, max_batch_size=4)
    runner.fail_prefill = OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB")
    h.submit("a", prompt_len=5000, max_new=3)
    assert wait_until(lambda: h.finished("a") is FinishReason.LENGTH)
    assert "a" not in h.failures
    assert [c.end for c in runner.prefill_plans[0]] == [4096], "halved from one pass of 8192"


def test_token_details_reach_the_streamer(harness_factory):
    h = harness_factory()
    h.submit("a", max_new=3)
    assert wait_until(lambda: h.finished("a") is FinishReason.LENGTH)
    assert [d.id for d in h.streamers["a"].details] == [1, 2]  # decode steps carry details


def test_cached_prompt_tokens_are_not_prefilled_and_are_reported(harness_factory):
    runner = FakeRunner()
    runner.cached_for = lambda prompt_len: 64 if prompt_len >= 100 else 0
    h = harness_factory(runner, max_batch_size=4)
    job = h.submit("cached", prompt_len=150, max_new=2)
    assert wait_until(lambda: h.finished("cached") is FinishReason.LENGTH)
    assert runner.prefill_plans[0] == [PrefillChunk(0, 64, 150)]
    assert job.control.cached_tokens == 64
    load = h.scheduler.load()
    assert (load.prefix_query_tokens, load.prefix_hit_tokens) == (150, 64)
    h.submit("private", prompt_len=150, max_new=2, private=True)
    assert wait_until(lambda: h.finished("private") is FinishReason.LENGTH)
    assert h.scheduler.load().prefix_query_tokens == 150, "private prompts are not counted"


def test_a_prompt_another_row_is_prefilling_waits_for_it_then_reuses_it(harness_factory):
    runner = FakeRunner(prefix_block=16)
    runner.gate.clear()  # both arrive before the first step
    h = harness_factory(runner, max_batch_size=4, max_prefill_tokens=32)
    h.submit("decoding", prompt_len=3, max_new=400)
    assert runner.held.wait(10)
    leader = h.submit("leader", prompt_len=100, max_new=2)
    follower = h.submit("follower", prompt_len=100, max_new=2)
    runner.reused[2] = 96  # what the cache will hold for the follower: 6 whole blocks
    runner.gate.set()
    assert wait_until(lambda: h.finished("follower") is FinishReason.LENGTH)
    planned = {k: [(c.start, c.end) for plan in runner.prefill_plans for c in plan if c.key == k]
               for k in (1, 2)}  # fmt: skip
    assert planned[1][-1][1] == 100 and planned[1][0][0] == 0
    assert planned[2] == [(96, 100)], "the follower computed only what it did not share"
    assert follower.control.cached_tokens == 96 and leader.control.cached_tokens == 0
    assert h.scheduler.load().prefix_hit_tokens == 96
