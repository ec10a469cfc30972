"""The continuous-batching scheduler with a fake runner: no model, no gRPC, no torch.

The fake runner records which rows every step carried, so these tests can assert the
batch membership a user's latency depends on: a request joins at the next step, a
finished or cancelled one leaves at once, and the limits hold.
"""

from __future__ import annotations

import time

import pytest
from scheduler_fakes import FakeRunner
from support import wait_until
from zopilot_server.generation.domain import FinishReason
from zopilot_server.generation.sched.scheduler import EngineClosed, GenerationFailed, QueueFull


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
