"""The iteration-level (continuous batching) scheduler: what each decoding step computes.

One scheduler thread owns the model through a Runner (runner.py). The scheduler owns
every row's progress (prompt tokens computed, tokens generated) and, each iteration:
ends rows that were cancelled, timed out or are being shut down; admits waiting
requests while the KV arena has a free slot (and the optional ``max_batch_tokens``
work cap allows), FIFO; and hands the runner one Plan per step: the rows that decode one
token and the prompt chunks (of any number of rows) to prefill, all computed in one
packed forward. Chunks are sized in time, not in tokens: while streams decode, a step's
prompt tokens are what keeps it within ``max_step_stall`` times a pure decode step
(StepCost, measured as the server runs), shared by the joiners oldest first, so a long
prompt joining slows running streams by at most that factor and never starves (at least
``MIN_CHUNK`` tokens a step). With nobody decoding, prompts go in whole. Every token
then passes through ``_finish_reason``, the one place that decides whether a row ends
and why.

Requests beyond the arena wait in a FIFO queue of at most ``max_queue``; beyond that
``submit`` raises QueueFull with a retry hint. This module never imports torch: tests
drive it with a fake Runner. Tokens reach the client through each request's
TokenStreamer (``put_token`` / ``end``), which detects EOS and stop sequences.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..domain import (
    EngineClosed,
    EngineLoad,
    FinishReason,
    GenerationFailed,
    GenerationRequest,
    QueueFull,
    RequestTooLong,
    Sink,
)
from ..model.oom import is_out_of_memory
from .plan import ArenaInfo, Plan, PrefillChunk, RowSpec, Step
from .record import Job as Job  # re-exported: what submit returns
from .record import RequestRecord, Streamer
from .run_control import RunControl
from .speculation import DraftPolicy, DraftRow

log = logging.getLogger(__name__)


# Fewest prompt tokens a prefill chunk computes while others decode: joins never starve.
MIN_CHUNK = 16
# Query tokens (rows x longest chunk) of one prefill pass when nobody is decoding; larger
# groups go in several passes, which bounds a prefill's activation memory.
IDLE_PREFILL_TOKENS = 8192


@dataclass(frozen=True)
class BatchLimits:
    """How much work one decoding step may carry (ServerConfig's batching flags; the
    defaults here are only for tests that build a Scheduler directly)."""

    max_batch_size: int = 16
    max_batch_tokens: int = 0  # 0: no cap beyond the arena's slots
    max_prefill_tokens: int = 512
    max_queue: int = 32
    max_step_stall: float = 2.0  # a step carrying prefill, over a pure decode step
    speculative_tokens: int = 0  # most draft tokens a row verifies per step; 0: off


class Runner(Protocol):
    """The model side (runner.ModelRunner / SerialRunner; a fake one in unit tests)."""

    @property
    def info(self) -> ArenaInfo: ...
    @property
    def kv_tokens_used(self) -> int: ...
    def add(self, specs: Sequence[RowSpec]) -> dict[int, int]: ...
    def step(self, plan: Plan) -> list[Step]: ...
    def reuse(self, key: int) -> int: ...
    def remove(self, keys: Collection[int]) -> None: ...
    def release_memory(self) -> None: ...
    def flush_prefix_cache(self) -> int: ...


StreamerFactory = Callable[[RequestRecord], Streamer]


class StepCost:
    """What a step costs, learned as the server runs: a step of ``n`` decoding rows alone
    (``decode_s(n)``: the weight-read floor plus their attention, learned per batch size)
    and each query token packed beside them (``token_s``: a prompt token or a draft
    token). A step carrying ``p`` such tokens costs about ``decode_s(n) + p * token_s``,
    so the tokens a step may carry within a stall factor ``f`` are
    ``(f - 1) * decode_s(n) / token_s``.

    ``token_s`` is learned from steps that carry both, the steps it sizes: a prompt token
    is cheaper in a large pass with nobody decoding (on 2 CPU cores ~25 us per matrix
    row at 300 rows against ~40 at 16-32), so learning it there would overfill the next
    steps beside decoding rows. Until one such step was seen, MIN_CHUNK."""

    def __init__(self) -> None:
        self._decode: dict[int, float] = {}  # pure decode step seconds per batch size
        self.token_s: float | None = None
        self.token_dev = 0.0  # mean deviation of the per-token cost from token_s

    def decode_s(self, rows: int) -> float | None:
        """A pure decode step of ``rows`` rows: as measured, else the nearest batch size
        measured (None before any)."""
        if rows in self._decode:
            return self._decode[rows]
        if not self._decode:
            return None
        return self._decode[min(self._decode, key=lambda n: (abs(n - rows), n))]

    def observe(self, seconds: float, *, decode_rows: int, prompt_tokens: int) -> None:
        if not decode_rows:
            return
        decode_s = self.decode_s(decode_rows)
        if not prompt_tokens:
            self._decode[decode_rows] = _average(self._decode.get(decode_rows), seconds)
        elif decode_s is not None:
            per = max(seconds - decode_s, 0.0) / prompt_tokens
            if self.token_s is not None:
                self.token_dev = _average(self.token_dev, abs(per - self.token_s))
            self.token_s = _average(self.token_s, per)

    def prompt_budget(self, stall: float, cap: int, *, rows: int) -> int:
        """Prompt tokens for a step beside decoding rows, within [MIN_CHUNK, cap]. The
        per-token cost is taken one mean deviation high (as TCP sizes its retransmission
        timeout): steps vary, and it is the slowest ones the stall bound is about."""
        decode_s = self.decode_s(rows)
        if decode_s is None or self.token_s is None:
            return MIN_CHUNK
        per = self.token_s + self.token_dev
        if per <= 0:
            return cap
        fits = int((stall - 1.0) * decode_s / per)
        return max(MIN_CHUNK, min(cap, fits))


def _average(old: float | None, new: float) -> float:
    return new if old is None else 0.8 * old + 0.2 * new


@dataclass
class _Drain:
    """Set by drain(): running rows end with SHUTDOWN once ``deadline`` is near."""

    deadline: float


def _draining() -> EngineClosed:
    """What a request gets once the drain began: retry it on another replica."""
    return EngineClosed("server is draining; retry on another replica", retry_after_s=1.0)


def _adapter_names(records: Iterable[RequestRecord]) -> tuple[str, ...]:
    """The LoRA adapters ``records`` use, each once, sorted."""
    return tuple(sorted({r.request.adapter.name for r in records if r.request.adapter is not None}))


def _shared_blocks(a: Sequence[int], b: Sequence[int], block: int) -> int:
    """Tokens of whole ``block``s that prompt ``a`` shares with ``b`` from the start, at
    most ``len(a) - 1`` (a prompt's last token is always computed)."""
    limit = min(len(a) - 1, len(b))
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n // block * block


class Scheduler:
    """Admission, queue, the plan of every step, cancellation and deadlines; owns one
    thread, the only one that touches the runner."""

    def __init__(self, runner: Runner, make_streamer: StreamerFactory, limits: BatchLimits) -> None:
        self._runner = runner
        self._make_streamer = make_streamer
        self.limits = limits
        self.arena = runner.info
        # The serial runner holds one row: whatever the flags say, one request runs.
        self._slots = min(limits.max_batch_size, self.arena.slots)
        self._pending: collections.deque[RequestRecord] = collections.deque()
        self._rows: dict[int, RequestRecord] = {}
        self._reserved = 0  # sum of prompt + max_new_tokens over the running rows
        self._next_key = 0
        self._cond = threading.Condition()
        self._closed = False
        self._stop = False
        self._drain: _Drain | None = None
        self._cost = StepCost()
        self._prefill_cap = max(MIN_CHUNK, limits.max_prefill_tokens)
        self._idle_cap = IDLE_PREFILL_TOKENS
        self._prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self._prefix_hits = 0  # of those, found there
        self._drafts = DraftPolicy(limits.speculative_tokens)
        self._drafted = 0  # draft tokens verified, in total
        self._accepted = 0  # of those, accepted
        self._step_s = 0.0  # moving average of one iteration, for shutdown timing
        self._recent_seconds = 1.0  # moving average of request durations, for retry hints
        self._step_observers: list[Callable[[int], None]] = []
        # FlushCache calls waiting for the scheduler thread (the only one that may touch
        # the runner's prefix index): each gets the blocks dropped.
        self._flushes: list[concurrent.futures.Future[int]] = []
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    # -- admission (any thread) ----------------------------------------------------------
    def submit(self, request: GenerationRequest, sink: Sink) -> RequestRecord:
        """Admit ``request`` or raise QueueFull / EngineClosed / RequestTooLong. Never
        blocks."""
        job = RequestRecord(request, sink, RunControl(request.deadline), withdraw=self._withdraw)
        if job.cost > self.arena.tokens_per_slot:
            raise RequestTooLong(job.cost, self.arena.tokens_per_slot)
        with self._cond:
            if self._closed:
                raise _draining()
            free = max(0, self._slots - len(self._rows))
            if len(self._pending) + 1 - free > self.limits.max_queue:
                raise QueueFull(len(self._pending), self._retry_after())
            self._pending.append(job)
            self._cond.notify()
        return job

    def _withdraw(self, job: RequestRecord) -> None:
        """Drop a cancelled job that is still waiting, freeing its queue slot now."""
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                log.info("request %s: cancelled while queued", job.request.request_id)

    def _retry_after(self) -> float:
        return max(0.1, self._recent_seconds * (len(self._pending) + 1) / max(1, self._slots))

    def observe_steps(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(rows)`` after every decode step (the batch-size metric)."""
        self._step_observers.append(callback)

    @property
    def draining(self) -> bool:
        """True once drain() or close() ran: nothing new is admitted (KServe ServerReady)."""
        return self._closed

    @property
    def active_count(self) -> int:
        """Requests in the running batch (prefilling or decoding)."""
        with self._cond:
            return len(self._rows)

    @property
    def queued_count(self) -> int:
        """Requests waiting to join the batch."""
        with self._cond:
            return len(self._pending)

    def load(self) -> EngineLoad:
        with self._cond:
            return EngineLoad(
                waiting=len(self._pending),
                running=len(self._rows),
                kv_tokens_used=self._runner.kv_tokens_used,
                kv_tokens_budget=self.arena.slots * self.arena.tokens_per_slot,
                kv_slots_used=len(self._rows),
                kv_slots=self.arena.slots,
                kv_bytes=self.arena.bytes,
                prefix_query_tokens=self._prefix_queries,
                prefix_hit_tokens=self._prefix_hits,
                draft_tokens=self._drafted,
                accepted_draft_tokens=self._accepted,
                running_adapters=_adapter_names(self._rows.values()),
                waiting_adapters=_adapter_names(self._pending),
                kv_tokens_per_slot=self.arena.tokens_per_slot,
                prefix_block_tokens=self.arena.prefix_block_tokens,
            )

    # -- shutdown --------------------------------------------------------------------------
    def drain(self, grace_s: float) -> None:
        """Stop admitting; refuse what waits (UNAVAILABLE + RetryInfo, at once); let running
        rows go on, ending those still running by ``grace_s`` with SHUTDOWN and the text
        generated so far. A later call may only bring the deadline closer (a second
        signal: ``drain(0)`` ends every row now)."""
        with self._cond:
            self._closed = True
            deadline = time.monotonic() + grace_s
            if self._drain is None or deadline < self._drain.deadline:
                self._drain = _Drain(deadline)
            waiting = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in waiting:
            log.info("request %s: refused, server draining", job.request.request_id)
            job.sink(_draining())
        # The loop ends rows between steps when the time left is short of a step, but a
        # step cannot be interrupted and under load one can run far past the estimate
        # (0.4-1.9 s around a 0.9 s average, measured with the cores oversubscribed), past
        # the grace, and server.stop then cancels the streams without their text. So at
        # the deadline the rows still running are ended from this timer, mid-step: the
        # streamer is safe to complete from another thread, and the loop drops the rows
        # once their step returns.
        timer = threading.Timer(grace_s, self._end_running)
        timer.daemon = True
        timer.start()

    def _end_running(self) -> None:
        """The drain deadline: every row still running gets its final chunk now."""
        with self._cond:
            rows = list(self._rows.values())
        for row in rows:
            row.streamer.complete(FinishReason.SHUTDOWN)

    def close(self, timeout_s: float = 30.0) -> None:
        """End everything now (queued: refused; running: SHUTDOWN) and join the thread, so
        no model step is still running when the interpreter exits."""
        self.drain(0.0)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("scheduler thread still in a model step after %.0f s", timeout_s)

    # -- the scheduler thread ---------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._rows or self._stop or self._flushes):
                    self._cond.wait()
                flushes, self._flushes = self._flushes, []
                if self._stop and not self._rows:
                    for flush in flushes:
                        flush.cancel()
                    return
                admitted = self._admit_locked()
            self._flush(flushes)
            started = time.monotonic()
            try:
                self._start(admitted)
                self._iterate()
            except Exception as exc:
                log.exception("scheduler iteration failed; ending the running batch")
                for job in admitted:
                    if not any(row is job for row in self._rows.values()):
                        self._release(job)
                        job.sink(GenerationFailed(job.request.request_id, exc))
                self._fail_all(exc)
            self._step_s = _average(self._step_s, time.monotonic() - started)

    def flush_prefix_cache(self) -> concurrent.futures.Future[int]:
        """Drop the prefix cache of the free slots between two steps (any thread); the
        future gives the blocks dropped (cancelled if the engine stops first)."""
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        with self._cond:
            if self._stop:
                future.cancel()
                return future
            self._flushes.append(future)
            self._cond.notify()
        return future

    def _flush(self, flushes: list[concurrent.futures.Future[int]]) -> None:
        for flush in flushes:
            try:
                flush.set_result(self._runner.flush_prefix_cache())
            except Exception as exc:  # noqa: BLE001 - the caller's status, not the loop's
                flush.set_exception(exc)

    def _admit_locked(self) -> list[RequestRecord]:
        """Take waiting jobs (FIFO) while a slot is free and the work cap allows."""
        if self._drain is not None:
            return []
        admitted: list[RequestRecord] = []
        cap = self.limits.max_batch_tokens
        while self._pending and len(self._rows) + len(admitted) < self._slots:
            job = self._pending[0]
            if cap and self._reserved + job.cost > cap and (self._rows or admitted):
                break  # FIFO: the head waits for room rather than being overtaken
            self._pending.popleft()
            self._reserved += job.cost
            admitted.append(job)
        return admitted

    def _start(self, jobs: list[RequestRecord]) -> None:
        rows = []
        for job in jobs:
            streamer = self._make_streamer(job)
            if job.control.cancelled or job.control.out_of_time():
                reason = (
                    FinishReason.CANCELLED if job.control.cancelled else FinishReason.TIME_LIMIT
                )
                self._release(job)
                streamer.complete(reason)
                continue
            rows.append(job.start(self._next_key, streamer))
            self._next_key += 1
        if not rows:
            return
        cached = self._runner.add([RowSpec(r.key, r.request) for r in rows])
        for row in rows:
            row.computed = cached.get(row.key, 0)
            row.control.cached_tokens = row.computed
            if not row.request.private:
                self._prefix_queries += len(row.request.input_ids)
                self._prefix_hits += row.computed
        self._follow_leaders(rows)
        with self._cond:
            self._rows.update((r.key, r) for r in rows)

    def _follow_leaders(self, rows: list[RequestRecord]) -> None:
        """A new row whose prompt starts with what another row is still prefilling (the
        same document asked twice at once, many users' system prompt) waits for it and
        then copies that prefix, instead of computing it a second time."""
        block = self.arena.prefix_block_tokens
        if not block:
            return
        leaders = [r for r in self._rows.values() if r.prefilling and not r.request.private]
        for row in rows:
            if row.request.private:
                continue
            prompt = row.request.input_ids
            best, share = None, 0
            for leader in leaders:
                if leader.request.prefix_namespace != row.request.prefix_namespace:
                    continue  # another adapter's KV is not this row's
                shared = _shared_blocks(prompt, leader.request.input_ids, block)
                if shared > share:
                    best, share = leader, shared
            if best is not None and share >= row.computed + 2 * block:
                row.leader, row.share = best.key, share
            leaders.append(row)

    def _ready_to_prefill(self, row: RequestRecord) -> bool:
        """False while the row waits for its leader's prefix; once the leader has it (or
        left), the row takes what the cache holds and prefills only the rest."""
        if row.leader is None:
            return True
        leader = self._rows.get(row.leader)
        if leader is not None and leader.prefilling and leader.computed < row.share:
            return False
        row.leader = None
        before, row.computed = row.computed, self._runner.reuse(row.key)
        row.control.cached_tokens = row.computed
        self._prefix_hits += row.computed - before
        return True

    def _iterate(self) -> None:
        self._end_rows(self._interrupted())
        decoding = [r.key for r in self._rows.values() if not r.prefilling]
        ready = [r for r in self._rows.values() if r.prefilling and self._ready_to_prefill(r)]
        budget = self._step_budget(decoding=len(decoding))
        chunks = self._plan_prefill(ready, budget) if ready else []
        if not decoding and not chunks:
            return
        drafts = self._plan_drafts(decoding, budget - sum(c.end - c.start for c in chunks))
        steps = self._run_step(Plan(tuple(decoding), tuple(chunks), drafts))
        if decoding and steps:
            for observe in self._step_observers:
                observe(len(decoding))
        self._deliver(steps)

    def _step_budget(self, *, decoding: int) -> int:
        """Query tokens a step may carry beyond one per decoding row: while rows decode,
        as many as keep the step within ``max_step_stall`` times a pure decode step
        (StepCost); with nobody decoding, whole prompts up to IDLE_PREFILL_TOKENS."""
        if decoding:
            return self._cost.prompt_budget(
                self.limits.max_step_stall, self._prefill_cap, rows=decoding
            )
        return self._idle_cap

    def _plan_prefill(self, rows: list[RequestRecord], budget: int) -> list[PrefillChunk]:
        """This step's prompt chunks, oldest request first, sharing the step's budget.
        The oldest always gets at least MIN_CHUNK: never starved."""
        chunks = []
        for row in sorted(rows, key=lambda r: r.key):
            take = min(row.prompt_left, budget)
            if take <= 0:
                break
            chunks.append(PrefillChunk(row.key, row.computed, row.computed + take))
            budget -= take
        return chunks

    def _plan_drafts(self, decoding: list[int], budget: int) -> tuple[tuple[int, int], ...]:
        """Speculative decoding: how many tokens each decoding row may draft from its own
        text, within what the prompt chunks left of the step's budget (speculation.py)."""
        rows = [
            DraftRow(key, row.drafts, row.request.max_new_tokens - row.produced)
            for key in decoding
            if (row := self._rows[key]).request.speculative
        ]
        return self._drafts.allowances(
            rows,
            decode_s=self._cost.decode_s(len(decoding)),
            token_s=self._cost.token_s,
            budget=budget,
        )

    def _interrupted(self) -> list[RequestRecord]:
        """Rows to end before the next step: cancelled, out of time, or shutting down."""
        now = time.monotonic()
        ended = []
        for row in self._rows.values():
            reason = self._finish_reason(row, None, now)
            if reason is not None:
                row.control.finish(reason)
                ended.append(row)
        return ended

    def _finish_reason(
        self, row: RequestRecord, step: Step | None, now: float
    ) -> FinishReason | None:
        """Whether ``row`` ends now, and why: the one place every finish reason is decided.
        ``step`` is the token just delivered (None between steps). EOS and stop sequences
        are found by the row's streamer in the text and recorded on its control."""
        control = row.control
        if control.finish_reason is not None:  # EOS / stop sequence, or already decided
            return control.finish_reason
        if step is not None and step.final:
            return FinishReason.CONSTRAINT
        if row.produced >= row.request.max_new_tokens:
            return FinishReason.LENGTH
        if self._drain is not None and now + self._step_s >= self._drain.deadline:
            return FinishReason.SHUTDOWN
        if control.cancelled:
            return FinishReason.CANCELLED
        if control.out_of_time(now):
            return FinishReason.TIME_LIMIT
        return None

    def _run_step(self, plan: Plan) -> list[Step]:
        started = time.monotonic()
        try:
            steps = self._runner.step(plan)
        except Exception as exc:  # noqa: BLE001 - handed to the affected requests
            self._on_failure(exc, [self._rows[key] for key in plan.keys], plan)
            return []
        drafted = sum(step.drafted for step in steps)
        self._cost.observe(
            time.monotonic() - started,
            decode_rows=len(plan.decode),
            prompt_tokens=plan.prompt_tokens + drafted,
        )
        self._drafts.stepped(plan.prompt_tokens + drafted)
        for chunk in plan.chunks:
            self._rows[chunk.key].computed = chunk.end
        return steps

    def _on_failure(self, exc: Exception, affected: list[RequestRecord], plan: Plan) -> None:
        """Out of memory: a step with prompt chunks first retries with smaller ones;
        otherwise the newest row of the step is evicted (RESOURCE_EXHAUSTED) and the
        others retry, their state untouched. Any other failure ends every row of that
        step with it."""
        if is_out_of_memory(exc):
            self._runner.release_memory()
            if plan.chunks and self._shrink_prefill():
                log.warning("a step ran out of memory; retrying with smaller prompt chunks")
                return
            victims = [max(affected, key=lambda r: r.key)] if affected else []
        else:
            victims = affected
        for row in victims:
            log.error(
                "request %s: model step failed: %r",
                row.request.request_id,
                exc,
                exc_info=exc if row is victims[0] else None,
            )
            row.sink(GenerationFailed(row.request.request_id, exc))
        self._remove(victims)

    def _shrink_prefill(self) -> bool:
        if self._idle_cap <= MIN_CHUNK and self._prefill_cap <= MIN_CHUNK:
            return False
        self._idle_cap = max(MIN_CHUNK, self._idle_cap // 2)
        self._prefill_cap = max(MIN_CHUNK, self._prefill_cap // 2)
        return True

    def _fail_all(self, exc: Exception) -> None:
        rows = list(self._rows.values())
        for row in rows:
            row.sink(GenerationFailed(row.request.request_id, exc))
        with self._cond:
            self._rows.clear()
            self._reserved = 0
        try:
            self._runner.remove({row.key for row in rows})
        except Exception:
            log.exception("could not drop the failed rows")

    def _deliver(self, steps: list[Step]) -> None:
        """Hand each Step's token to its row, in order. A row that drafted gets several
        in one step; once one of them ends it (a stop sequence, max_new_tokens, EOS), the
        rest are dropped, as if they had never been computed."""
        ended, failed = [], []
        done: set[int] = set()
        ticked: set[int] = set()
        now = time.monotonic()
        for step in steps:
            row = self._rows[step.key]
            if step.drafted:
                self._verified(row, step)
            if step.key in done:
                continue
            if step.failure is not None:
                log.warning("request %s: %s", row.request.request_id, step.failure)
                row.sink(step.failure)
                failed.append(row)
                done.add(step.key)
                continue
            row.produced += 1
            row.streamer.put_token(step.token_id, step.detail)
            if step.key not in ticked:  # once per step: the time between two steps
                row.control.tick(now)
                ticked.add(step.key)
            reason = self._finish_reason(row, step, now)
            if reason is not None:
                row.control.finish(reason)
                ended.append(row)
                done.add(step.key)
        self._remove(failed)
        self._end_rows(ended)

    def _verified(self, row: RequestRecord, step: Step) -> None:
        row.drafts.verified(step.drafted, step.accepted)
        row.control.draft_tokens += step.drafted
        row.control.accepted_draft_tokens += step.accepted
        self._drafted += step.drafted
        self._accepted += step.accepted

    def _end_rows(self, rows: list[RequestRecord]) -> None:
        if not rows:
            return
        for row in rows:
            row.streamer.end()
            elapsed = time.monotonic() - (row.request.arrival or time.monotonic())
            self._recent_seconds = _average(self._recent_seconds, elapsed)
        self._remove(rows)

    def _remove(self, rows: list[RequestRecord]) -> None:
        if not rows:
            return
        keys = {row.key for row in rows}
        try:
            self._runner.remove(keys)
        finally:
            with self._cond:
                for row in rows:
                    if self._rows.pop(row.key, None) is not None:
                        self._reserved -= row.cost

    def _release(self, job: RequestRecord) -> None:
        with self._cond:
            self._reserved -= job.cost
