"""The generation engine: the batching scheduler over the model runner, and the async
side the servicer reads from.

The servicer hands the engine a GenerationRequest and reads Chunks back; whether the
request waited, ran alone or in a batch is the engine's business only. The scheduler
(scheduler.py, torch-free) decides which requests share each decoding step; the runner
(runner.py) owns the model, the KV cache and the per-row logits work; each request's
TokenStreamer turns its tokens into Chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ..config import ServerConfig
from .chunk_channel import ChunkChannel, ResultCollector
from .constraints import ConstraintCompiler
from .domain import Chunk, GenerationRequest
from .model_loader import LoadedModel
from .runner import ModelRunner
from .scheduler import (
    BatchLimits,
    EngineClosed,
    GenerationFailed,
    Job,
    QueueFull,
    Scheduler,
    Sink,
)
from .streamer import TokenStreamer

__all__ = [
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


def batch_limits(config: ServerConfig) -> BatchLimits:
    """The batching limits of ``config``: ServerConfig holds the defaults (BatchLimits'
    own serve the scheduler's unit tests only)."""
    return BatchLimits(
        max_batch_size=config.max_batch_size,
        max_batch_tokens=config.max_batch_tokens,
        max_prefill_tokens=config.max_prefill_tokens,
        max_queue=config.max_queue,
    )


class GenerationEngine(Scheduler):
    """Owns the model: a Scheduler whose runner is the loaded model."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        limits: BatchLimits | None = None,
        stream_interval_s: float = 0.0,
    ) -> None:
        self.loaded = loaded
        self.stream_interval_s = stream_interval_s
        vocab = max(getattr(loaded.model.config, "vocab_size", 0) or 0, len(loaded.tokenizer))
        self.constraints = ConstraintCompiler(
            loaded.tokenizer, vocab_size=vocab, eos_token_ids=sorted(loaded.eos_token_ids)
        )
        limits = limits or batch_limits(ServerConfig())
        runner = ModelRunner(loaded, max_prefill_tokens=limits.max_prefill_tokens)
        super().__init__(runner, self._streamer_for, limits)

    def _streamer_for(self, job: Job) -> TokenStreamer:
        request = job.request
        return TokenStreamer(
            self.loaded.tokenizer,
            request,
            job.control,
            eos_token_ids=self.loaded.eos_token_ids,
            sink=job.sink,
        )


async def stream_chunks(
    engine: GenerationEngine, request: GenerationRequest
) -> AsyncIterator[Chunk]:
    """Submit ``request`` and yield its Chunks without blocking the event loop.

    Chunks cross from the scheduler thread through a ChunkChannel. Leaving the iteration
    early (the client cancelled: the handler task is cancelled) cancels the job, which
    takes its row out of the batch within one decoding step.
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
