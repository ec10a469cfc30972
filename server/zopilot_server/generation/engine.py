"""The generation engine: bounded admission, worker threads that own the model, streaming.

The servicer hands the engine a GenerationRequest and reads Chunks back; whether the
request waited, ran alone or (later) in a batch is the engine's business only. Each
worker thread runs one ``model.generate`` at a time; ``max_concurrent`` workers share
the model. Requests beyond the free workers wait in a queue of at most ``max_queue``;
beyond that, ``submit`` raises QueueFull with a retry hint.

Errors inside generate() are caught in the worker and delivered to the reader as
GenerationFailed: transformers' own streamer would leave the reader blocked forever.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from .chunk_channel import ChunkChannel, ResultCollector
from .domain import Chunk, EngineLoad, FinishReason, GenerationRequest
from .model_loader import LoadedModel
from .oom import is_out_of_memory
from .run_control import RunControl, stopping_criteria
from .streamer import TokenStreamer
from .token_details import LogprobRecorder

log = logging.getLogger(__name__)

Sink = Callable[[object], None]


class QueueFull(Exception):
    """No generation slot and no room to wait; retry after ``retry_after_s``."""

    def __init__(self, queued: int, retry_after_s: float) -> None:
        super().__init__(f"generation queue is full ({queued} waiting); retry later")
        self.retry_after_s = retry_after_s


class EngineClosed(Exception):
    """The engine is shutting down and accepts no new work."""


class GenerationFailed(Exception):
    """generate() raised; ``cause`` is the original exception."""

    def __init__(self, request_id: str, cause: BaseException) -> None:
        super().__init__(f"generation failed for request {request_id}: {cause!r}")
        self.request_id = request_id
        self.cause = cause


@dataclass
class Job:
    """One admitted request: what the worker needs and what the caller can cancel."""

    request: GenerationRequest
    sink: Sink
    control: RunControl
    withdraw: Callable[[Job], None] | None = None

    def cancel(self) -> None:
        """Stop the job: a running one within one decoding step, a queued one at once."""
        self.control.cancel()
        if self.withdraw is not None:
            self.withdraw(self)


class GenerationEngine:
    """Owns the model; runs admitted requests on ``max_concurrent`` worker threads."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_concurrent: int = 1,
        max_queue: int = 0,
        stream_interval_s: float = 0.0,
    ):
        self.loaded = loaded
        self.stream_interval_s = stream_interval_s
        self._max_queue = max_queue
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._idle = 0
        self._active = 0
        self._closed = False
        self._recent_seconds = 1.0  # moving average of job durations, for retry hints
        self._workers = [
            threading.Thread(target=self._work, name=f"generate-{i}", daemon=True)
            for i in range(max_concurrent)
        ]
        for worker in self._workers:
            worker.start()

    # -- admission ----------------------------------------------------------------
    def submit(self, request: GenerationRequest, sink: Sink) -> Job:
        """Admit ``request`` or raise QueueFull / EngineClosed. Never blocks."""
        job = Job(request, sink, RunControl(request.deadline), withdraw=self._withdraw)
        with self._cond:
            if self._closed:
                raise EngineClosed("server is shutting down")
            waiting = len(self._pending) + 1 - self._idle
            if waiting > self._max_queue:
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
        workers = max(1, len(self._workers))
        return max(0.1, self._recent_seconds * (len(self._pending) + 1) / workers)

    @property
    def active_count(self) -> int:
        """Generations running right now."""
        with self._cond:
            return self._active

    @property
    def queued_count(self) -> int:
        """Requests waiting for a worker."""
        with self._cond:
            return len(self._pending)

    def load(self) -> EngineLoad:
        """Waiting / running counts for metrics (TEMPORARY: the scheduler replaces this)."""
        return EngineLoad(waiting=self.queued_count, running=self.active_count)

    def close(self) -> None:
        """Refuse new work, cancel what still waits, and let the workers exit when idle.

        A running generation ends with its RPC (the server is stopped first, and a
        cancelled call cancels its job), so only queued jobs are cancelled here.
        """
        with self._cond:
            self._closed = True
            jobs = list(self._pending)
            self._cond.notify_all()
        for job in jobs:
            job.cancel()

    # -- workers ------------------------------------------------------------------
    def _next_job(self) -> Job | None:
        with self._cond:
            self._idle += 1
            while not self._pending and not self._closed:
                self._cond.wait()
            self._idle -= 1
            if not self._pending:
                return None
            self._active += 1
            return self._pending.popleft()

    def _work(self) -> None:
        while (job := self._next_job()) is not None:
            started = time.monotonic()
            try:
                self._run(job)
            finally:
                elapsed = time.monotonic() - started
                with self._cond:
                    self._active -= 1
                    self._recent_seconds = 0.8 * self._recent_seconds + 0.2 * elapsed

    def _run(self, job: Job) -> None:
        request, control = job.request, job.control
        recorder = (
            LogprobRecorder(self.loaded.tokenizer, request.top_n_tokens)
            if request.token_details
            else None
        )
        streamer = TokenStreamer(
            self.loaded.tokenizer,
            request,
            control,
            eos_token_ids=self.loaded.eos_token_ids,
            recorder=recorder,
            sink=job.sink,
        )
        if control.cancelled:
            streamer.complete(FinishReason.CANCELLED)
            return
        if control.out_of_time():
            streamer.complete(FinishReason.TIME_LIMIT)
            return
        import torch

        try:
            # inference_mode, not just generate()'s own no_grad: no autograd bookkeeping
            # (version counters, view tracking) per op, which for a small model is a
            # sizeable share of each decoding step (about 7% for the tiny test Llama).
            with torch.inference_mode():
                self.loaded.model.generate(
                    **generate_kwargs(self.loaded, request, streamer, recorder)
                )
        except BaseException as exc:
            log.exception("request %s: generate() failed", request.request_id)
            if is_out_of_memory(exc):
                _release_cached_gpu_memory()
            job.sink(GenerationFailed(request.request_id, exc))
            return
        streamer.end()


def _release_cached_gpu_memory() -> None:
    """After a CUDA OOM the failed request's tensors are garbage; hand their cached blocks
    back so the next request does not fail on fragmentation."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate_kwargs(
    loaded: LoadedModel,
    request: GenerationRequest,
    streamer: TokenStreamer,
    recorder: LogprobRecorder | None,
) -> dict[str, Any]:
    """Keyword arguments for ``model.generate`` that implement ``request``."""
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    device = loaded.model.device
    input_ids = torch.tensor([request.input_ids], dtype=torch.long, device=device)
    sampling = request.sampling
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "max_new_tokens": request.max_new_tokens,
        "min_new_tokens": request.min_new_tokens or None,
        "do_sample": not sampling.greedy,
        "repetition_penalty": sampling.repetition_penalty,
        "streamer": streamer,
        "stopping_criteria": StoppingCriteriaList([stopping_criteria(streamer.control)]),
        "pad_token_id": loaded.tokenizer.pad_token_id
        if loaded.tokenizer.pad_token_id is not None
        else next(iter(loaded.eos_token_ids), 0),
    }
    if not sampling.greedy:
        torch.manual_seed(sampling.seed)
        kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
    else:  # silence "do_sample is False but temperature is set" from the model's defaults
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if request.ignore_eos:
        kwargs["eos_token_id"] = None
    if recorder is not None:
        kwargs["logits_processor"] = LogitsProcessorList([recorder])
    return kwargs


async def stream_chunks(
    engine: GenerationEngine, request: GenerationRequest
) -> AsyncIterator[Chunk]:
    """Submit ``request`` and yield its Chunks without blocking the event loop.

    Chunks cross from the generate thread through a ChunkChannel. Leaving the iteration
    early (the client cancelled: the handler task is cancelled) cancels the job, which
    stops generate() within one decoding step.
    """
    channel = ChunkChannel(asyncio.get_running_loop())
    job = engine.submit(request, channel.put)
    interval = engine.stream_interval_s
    try:
        while True:
            chunk = await channel.get()
            yield chunk
            if chunk.completion is not None:
                return
            if interval:  # let tokens pile up; the first chunk already went out at once
                await asyncio.sleep(interval)
    finally:
        job.cancel()


async def complete_generation(engine: GenerationEngine, request: GenerationRequest) -> Chunk:
    """Submit ``request`` and return the whole generation as one Chunk (unary Generate).

    Cancelling the awaiting task (client gone) cancels the job, as for streams.
    """
    collector = ResultCollector(asyncio.get_running_loop())
    job = engine.submit(request, collector.put)
    try:
        return await collector.result()
    finally:
        job.cancel()
