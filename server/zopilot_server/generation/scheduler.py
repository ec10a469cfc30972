"""The iteration-level (continuous batching) scheduler: who runs at each decoding step.

One scheduler thread owns the model through a Runner (runner.py). Every iteration it
ends rows that were cancelled, timed out or are being shut down; admits waiting
requests that fit ``max_batch_size`` and the KV budget ``max_batch_tokens`` as one
prefill group; runs one prefill chunk of that group (at most ``max_prefill_tokens``
prompt tokens while at least as many rows decode as join, so a long prompt joining
never freezes the running streams for its whole prefill; the whole group in one pass
otherwise); and then one decode step over every running row. A finished row leaves the
batch at once. Requests beyond the batch wait in a FIFO queue of at most ``max_queue``;
beyond that ``submit`` raises QueueFull with a retry hint.

This module never imports torch: tests drive it with a fake Runner. Tokens reach the
client through each request's TokenStreamer (``put_token`` / ``end``), so detokenizing,
stop sequences and chunking are the streamer's business, as they were under generate().
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from .domain import (
    EngineClosed,
    EngineLoad,
    FinishReason,
    GenerationFailed,
    GenerationRequest,
    QueueFull,
    Sink,
    TokenDetail,
)
from .oom import is_out_of_memory
from .run_control import RunControl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchLimits:
    """How much work one decoding step may carry (ServerConfig's batching flags)."""

    max_batch_size: int = 8
    max_batch_tokens: int = 32768
    max_prefill_tokens: int = 64
    max_queue: int = 32


@dataclass(frozen=True)
class RowSpec:
    """What the runner needs to start a row."""

    key: int
    request: GenerationRequest


@dataclass(frozen=True)
class Step:
    """One generated token of one row. ``final``: the row's constraint is complete with
    this token and allows nothing more, so the row ends (FinishReason.CONSTRAINT).
    ``failure``: this row cannot go on (its constraint broke); it ends with that error
    and the token is not output, while the other rows of the step go on."""

    key: int
    token_id: int
    detail: TokenDetail | None = None
    final: bool = False
    failure: Exception | None = None


class Runner(Protocol):
    """The model side (runner.ModelRunner; a fake one in the scheduler's unit tests)."""

    @property
    def prefilling(self) -> bool: ...
    def begin_prefill(self, specs: Sequence[RowSpec]) -> None: ...
    def prefill_step(self, chunked: bool = True) -> list[Step] | None: ...
    def decode_step(self) -> list[Step]: ...
    def remove(self, keys: Collection[int]) -> None: ...
    def release_memory(self) -> None: ...


class Streamer(Protocol):
    """What the scheduler needs of a TokenStreamer."""

    def put_token(self, token_id: int, detail: TokenDetail | None = None) -> None: ...
    def end(self) -> None: ...
    def complete(self, reason: FinishReason) -> None: ...


StreamerFactory = Callable[["Job"], Streamer]


@dataclass(eq=False)
class Job:
    """One admitted request: what the scheduler needs and what the caller can cancel."""

    request: GenerationRequest
    sink: Sink
    control: RunControl
    withdraw: Callable[[Job], None] | None = None

    @property
    def cost(self) -> int:
        """KV cache tokens this request may hold at its longest."""
        return len(self.request.input_ids) + self.request.max_new_tokens

    def cancel(self) -> None:
        """Stop the job: a running one within one decoding step, a queued one at once."""
        self.control.cancel()
        if self.withdraw is not None:
            self.withdraw(self)


@dataclass(eq=False)
class _Running:
    key: int
    job: Job
    streamer: Streamer
    produced: int = 0
    prefilling: bool = True


@dataclass
class _Drain:
    """Set by drain(): running rows end with SHUTDOWN once ``deadline`` is near."""

    deadline: float


def _draining() -> EngineClosed:
    """What a request gets once the drain began: retry it on another replica."""
    return EngineClosed("server is draining; retry on another replica", retry_after_s=1.0)


class Scheduler:
    """Admission, queue, batch membership, cancellation and deadlines; owns one thread."""

    def __init__(self, runner: Runner, make_streamer: StreamerFactory, limits: BatchLimits) -> None:
        self._runner = runner
        self._make_streamer = make_streamer
        self.limits = limits
        self._pending: collections.deque[Job] = collections.deque()
        self._rows: dict[int, _Running] = {}
        self._kv_used = 0
        self._next_key = 0
        self._cond = threading.Condition()
        self._closed = False
        self._stop = False
        self._drain: _Drain | None = None
        self._step_s = 0.0  # moving average of one iteration, for shutdown timing
        self._recent_seconds = 1.0  # moving average of request durations, for retry hints
        self._step_observers: list[Callable[[int], None]] = []
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    # -- admission (any thread) ----------------------------------------------------------
    def submit(self, request: GenerationRequest, sink: Sink) -> Job:
        """Admit ``request`` or raise QueueFull / EngineClosed. Never blocks."""
        job = Job(request, sink, RunControl(request.deadline), withdraw=self._withdraw)
        with self._cond:
            if self._closed:
                raise _draining()
            free = max(0, self.limits.max_batch_size - len(self._rows))
            if len(self._pending) + 1 - free > self.limits.max_queue:
                raise QueueFull(len(self._pending), self._retry_after())
            self._pending.append(job)
            self._cond.notify()
        return job

    def _withdraw(self, job: Job) -> None:
        """Drop a cancelled job that is still waiting, freeing its queue slot now."""
        with self._cond:
            if job in self._pending:
                self._pending.remove(job)
                log.info("request %s: cancelled while queued", job.request.request_id)

    def _retry_after(self) -> float:
        slots = max(1, self.limits.max_batch_size)
        return max(0.1, self._recent_seconds * (len(self._pending) + 1) / slots)

    def observe_steps(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(rows)`` after every decode step (the batch-size metric)."""
        self._step_observers.append(callback)

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
                kv_tokens_used=self._kv_used,
                kv_tokens_budget=self.limits.max_batch_tokens,
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
                while not self._pending and not self._rows and not self._stop:
                    self._cond.wait()
                if self._stop and not self._rows:
                    return
                admitted = self._admit_locked()
            started = time.monotonic()
            try:
                self._start(admitted)
                self._iterate()
            except Exception as exc:
                log.exception("scheduler iteration failed; ending the running batch")
                for job in admitted:
                    if not any(row.job is job for row in self._rows.values()):
                        self._release(job)
                        job.sink(GenerationFailed(job.request.request_id, exc))
                self._fail_all(exc)
            self._step_s = 0.8 * self._step_s + 0.2 * (time.monotonic() - started)

    def _admit_locked(self) -> list[Job]:
        """Take waiting jobs (FIFO) that fit the batch and the KV budget, if no group is
        being prefilled already (one group at a time keeps prefill work bounded)."""
        if self._runner.prefilling or self._drain is not None:
            return []
        admitted: list[Job] = []
        limits = self.limits
        while self._pending and len(self._rows) + len(admitted) < limits.max_batch_size:
            job = self._pending[0]
            fits = self._kv_used + job.cost <= limits.max_batch_tokens
            if not fits and (self._rows or admitted):
                break  # FIFO: the head waits for room rather than being overtaken
            self._pending.popleft()
            self._kv_used += job.cost
            admitted.append(job)
        return admitted

    def _start(self, jobs: list[Job]) -> None:
        specs = []
        for job in jobs:
            streamer = self._make_streamer(job)
            if job.control.cancelled or job.control.out_of_time():
                reason = (
                    FinishReason.CANCELLED if job.control.cancelled else FinishReason.TIME_LIMIT
                )
                self._release(job)
                streamer.complete(reason)
                continue
            key = self._next_key
            self._next_key += 1
            with self._cond:
                self._rows[key] = _Running(key, job, streamer)
            specs.append(RowSpec(key, job.request))
        if specs:
            self._runner.begin_prefill(specs)

    def _iterate(self) -> None:
        self._end_rows(self._interrupted())
        if self._runner.prefilling:
            # Chunk the prefill only when it would delay more running streams than it
            # serves: N streams arriving together behind one that just started are
            # better served by one pass than by many chunk steps.
            decoding = sum(not row.prefilling for row in self._rows.values())
            joining = len(self._rows) - decoding
            steps = self._run_step(prefill=True, chunked=decoding >= joining)
            if steps:
                self._deliver(steps)
        if any(not row.prefilling for row in self._rows.values()):
            steps = self._run_step(prefill=False)
            if steps:
                for observe in self._step_observers:
                    observe(len(steps))
                self._deliver(steps)

    def _interrupted(self) -> list[_Running]:
        """Rows to end before the next step: cancelled, out of time, or shutting down."""
        now = time.monotonic()
        shutting_down = self._drain is not None and now + self._step_s >= self._drain.deadline
        ended = []
        for row in self._rows.values():
            control = row.job.control
            if shutting_down:
                control.finish(FinishReason.SHUTDOWN)
            elif control.cancelled:
                control.finish(FinishReason.CANCELLED)
            elif control.out_of_time(now):
                control.finish(FinishReason.TIME_LIMIT)
            if control.finish_reason is not None:
                ended.append(row)
        return ended

    def _run_step(self, *, prefill: bool, chunked: bool = True) -> list[Step] | None:
        affected = [row for row in self._rows.values() if row.prefilling == prefill]
        try:
            if prefill:
                return self._runner.prefill_step(chunked)
            return self._runner.decode_step()
        except Exception as exc:  # noqa: BLE001 - handed to the affected requests
            self._on_failure(exc, affected, prefill=prefill)
            return None

    def _on_failure(self, exc: Exception, affected: list[_Running], *, prefill: bool) -> None:
        """An out-of-memory step evicts only its newest row (RESOURCE_EXHAUSTED) and the
        others go on; any other failure ends every row of that step with the error."""
        if is_out_of_memory(exc):
            self._runner.release_memory()
            victims = [max(affected, key=lambda r: r.key)] if affected else []
        else:
            victims = affected
        for row in victims:
            log.error(
                "request %s: model step failed: %r",
                row.job.request.request_id,
                exc,
                exc_info=exc if row is victims[0] else None,
            )
            row.job.sink(GenerationFailed(row.job.request.request_id, exc))
        self._remove(victims)
        survivors = [r for r in affected if r not in victims]
        if prefill and survivors and not self._runner.prefilling:
            self._runner.begin_prefill([RowSpec(r.key, r.job.request) for r in survivors])

    def _fail_all(self, exc: Exception) -> None:
        rows = list(self._rows.values())
        for row in rows:
            row.job.sink(GenerationFailed(row.job.request.request_id, exc))
        with self._cond:
            self._rows.clear()
            self._kv_used = 0
        try:
            self._runner.remove({row.key for row in rows})
        except Exception:
            log.exception("could not drop the failed rows")

    def _deliver(self, steps: list[Step]) -> None:
        ended, failed = [], []
        for step in steps:
            row = self._rows[step.key]
            row.prefilling = False
            if step.failure is not None:
                log.warning("request %s: %s", row.job.request.request_id, step.failure)
                row.job.sink(step.failure)
                failed.append(row)
                continue
            row.produced += 1
            row.streamer.put_token(step.token_id, step.detail)
            control = row.job.control
            if step.final:
                control.finish(FinishReason.CONSTRAINT)
            if row.produced >= row.job.request.max_new_tokens:
                control.finish(FinishReason.LENGTH)
            if control.should_stop():
                ended.append(row)
        self._remove(failed)
        self._end_rows(ended)

    def _end_rows(self, rows: list[_Running]) -> None:
        if not rows:
            return
        for row in rows:
            row.streamer.end()
            elapsed = time.monotonic() - (row.job.request.arrival or time.monotonic())
            self._recent_seconds = 0.8 * self._recent_seconds + 0.2 * elapsed
        self._remove(rows)

    def _remove(self, rows: list[_Running]) -> None:
        if not rows:
            return
        keys = {row.key for row in rows}
        try:
            self._runner.remove(keys)
        finally:
            with self._cond:
                for row in rows:
                    if self._rows.pop(row.key, None) is not None:
                        self._kv_used -= row.job.cost

    def _release(self, job: Job) -> None:
        with self._cond:
            self._kv_used -= job.cost
