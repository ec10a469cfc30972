"""The scheduler's prefill with a fake runner (no model, no gRPC, no torch): prompts cut
into chunks that ride in the running rows' decode steps within the stall factor, joiners
sharing a step's budget, cancelling mid-prefill, arena-slot admission, out-of-memory in
prefill, and prompt tokens reused from the prefix cache.
"""

from __future__ import annotations

import itertools

import pytest
from scheduler_fakes import FakeRunner
from support import wait_until
from zopilot_server.generation.domain import FinishReason
from zopilot_server.generation.sched.plan import PrefillChunk
from zopilot_server.generation.sched.scheduler import RequestTooLong


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
