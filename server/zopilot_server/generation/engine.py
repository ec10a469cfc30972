"""The generation engine: the batching scheduler over the model runner, and the async
side the servicer reads from.

The servicer hands the engine a GenerationRequest and reads Chunks back; whether the
request waited, ran alone or in a batch is the engine's business only. The pipeline:
scheduler.py (torch-free) plans each step (plan.py), runner.py executes it over the KV
arena (kv_arena.py) and chooses tokens (sampling.py), and each request's TokenStreamer
(streamer.py) turns its tokens into Chunks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from ..config import ServerConfig
from .domain import Chunk, EngineLoad, GenerationRequest
from .kv.kv_arena import ArenaBudget, ArenaSize, arena_shape, budget_bytes, plan_size
from .loading.adapters import AdapterRegistry
from .loading.model_loader import LoadedModel
from .model import lora
from .model.constraints import ConstraintCompiler
from .model.runner import build_runner
from .output.chunk_channel import ChunkChannel, ResultCollector
from .output.streamer import TokenStreamer
from .sched.plan import ArenaInfo
from .sched.scheduler import (
    BatchLimits,
    EngineClosed,
    GenerationFailed,
    Job,
    QueueFull,
    Scheduler,
    Sink,
)

__all__ = [
    "ArenaBudget",
    "BatchLimits",
    "EngineClosed",
    "GenerationEngine",
    "GenerationFailed",
    "Job",
    "QueueFull",
    "Sink",
    "batch_limits",
    "complete_generation",
    "stream_chunks",
]

log = logging.getLogger(__name__)


def batch_limits(config: ServerConfig) -> BatchLimits:
    """The batching limits of ``config``: ServerConfig holds the defaults (BatchLimits'
    own serve the scheduler's unit tests only)."""
    return BatchLimits(
        max_batch_size=config.max_batch_size,
        max_batch_tokens=config.max_batch_tokens,
        max_prefill_tokens=config.max_prefill_tokens,
        max_queue=config.max_queue,
        max_step_stall=config.max_step_stall,
        speculative_tokens=config.speculative_tokens,
    )


def arena_budget(config: ServerConfig) -> ArenaBudget:
    """How much memory the KV arena of ``config`` may take."""
    return ArenaBudget(
        memory_mib=config.kv_cache_memory_mib,
        memory_fraction=config.kv_cache_memory_fraction,
        tokens_per_slot=config.kv_slot_tokens,
    )


class GenerationEngine:
    """Owns the model: a scheduler over the model's runner, and what requests share
    (the loaded model, the constraint compiler)."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        limits: BatchLimits | None = None,
        budget: ArenaBudget | None = None,
        prefix_cache: bool = True,
        speculative_ngram: tuple[int, int] = (2, 4),
        stream_interval_s: float = 0.0,
        adapters: Sequence[tuple[str, str]] = (),
        max_loras: int = 8,
        max_lora_rank: int = 64,
    ) -> None:
        limits = limits or batch_limits(ServerConfig())
        budget = budget or arena_budget(ServerConfig())
        size = _arena_size(loaded, limits, budget)
        ngram = speculative_ngram if limits.speculative_tokens else None
        runner = build_runner(loaded, size, prefix_cache=prefix_cache, ngram=ngram)
        if runner.info.mode != "arena":  # drafts are verified in the packed step only
            limits = dataclasses.replace(limits, speculative_tokens=0)
        self.speculative_ngram = ngram if limits.speculative_tokens else None
        self.arena: ArenaInfo = runner.info
        # A request may use what one slot holds: validation and ModelInfo see that.
        context = min(loaded.max_context_length, self.arena.tokens_per_slot)
        self.loaded = dataclasses.replace(loaded, max_context_length=context)
        self.stream_interval_s = stream_interval_s
        vocab = max(getattr(loaded.model.config, "vocab_size", 0) or 0, len(loaded.tokenizer))
        self.constraints = ConstraintCompiler(
            loaded.tokenizer, vocab_size=vocab, eos_token_ids=sorted(loaded.eos_token_ids)
        )
        log.info(
            "KV cache: %s, %d slots x %d tokens, %.1f MiB, prefix cache %s%s",
            self.arena.mode,
            self.arena.slots,
            self.arena.tokens_per_slot,
            self.arena.bytes / 2**20,
            f"on ({self.arena.prefix_block_tokens}-token blocks)"
            if self.arena.prefix_cache
            else "off",
            f" ({self.arena.reason})" if self.arena.reason else "",
        )
        if limits.speculative_tokens:
            log.info(
                "speculative decoding: up to %d draft tokens per row and step, from "
                "%d..%d-token n-grams of the request's own text",
                limits.speculative_tokens,
                *speculative_ngram,
            )
        self.adapters = AdapterRegistry(
            loaded.model,
            max_loras,
            max_lora_rank,
            unavailable=""
            if self.arena.mode == "arena"
            else "this model runs serially (one request at a time, the model's own forward)",
        )
        self.adapters.on_load.append(functools.partial(lora.install, loaded.model))
        self.adapters.on_unload.append(lora.forget)
        for name, path in adapters:  # --lora: a bad one stops the start, naming why
            self.adapters.load(name, path)
        self.scheduler = Scheduler(runner, self._streamer_for, limits)

    # The scheduler's public face, so callers need not know the engine is composed.
    def submit(self, request: GenerationRequest, sink: Sink) -> Job:
        return self.scheduler.submit(request, sink)

    def load(self) -> EngineLoad:
        return dataclasses.replace(self.scheduler.load(), max_loras=self.adapters.max_loras)

    def drain(self, grace_s: float) -> None:
        self.scheduler.drain(grace_s)

    def flush_prefix_cache(self) -> concurrent.futures.Future[int]:
        return self.scheduler.flush_prefix_cache()

    def close(self, timeout_s: float = 30.0) -> None:
        self.scheduler.close(timeout_s)

    def observe_steps(self, callback: Callable[[int], None]) -> None:
        self.scheduler.observe_steps(callback)

    @property
    def limits(self) -> BatchLimits:
        return self.scheduler.limits

    @property
    def active_count(self) -> int:
        return self.scheduler.active_count

    @property
    def queued_count(self) -> int:
        return self.scheduler.queued_count

    @property
    def draining(self) -> bool:
        return self.scheduler.draining

    def _streamer_for(self, job: Job) -> TokenStreamer:
        request = job.request
        return TokenStreamer(
            self.loaded.tokenizer,
            request,
            job.control,
            eos_token_ids=self.loaded.eos_token_ids,
            sink=job.sink,
        )


def _arena_size(loaded: LoadedModel, limits: BatchLimits, budget: ArenaBudget) -> ArenaSize | None:
    shape = arena_shape(loaded.model)
    if shape is None:
        return None
    return plan_size(
        shape,
        budget_bytes=budget_bytes(budget, loaded.model.device),
        max_slots=limits.max_batch_size,
        max_context=loaded.max_context_length,
        tokens_per_slot=budget.tokens_per_slot,
    )


async def stream_chunks(
    engine: GenerationEngine,
    request: GenerationRequest,
    on_submit: Callable[[Job], None] | None = None,
) -> AsyncIterator[Chunk]:
    """Submit ``request`` and yield its Chunks without blocking the event loop.

    Chunks cross from the scheduler thread through a ChunkChannel. Leaving the iteration
    early (the client cancelled: the handler task is cancelled) cancels the job, which
    takes its row out of the batch within one decoding step. ``on_submit`` gets the job
    (a protocol's Abort-by-id cancels it; the stream then ends with CANCELLED).
    """
    channel = ChunkChannel(asyncio.get_running_loop())
    job = engine.submit(request, channel.put)
    if on_submit is not None:
        on_submit(job)
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
