"""``vllm.grpc.engine.VllmEngine`` over the same engine as zopilot.v1: the worker contract
gateways (smg, llm-d's endpoint picker) route to.

Generate takes token ids (the gateway tokenized and applied the chat template) or text,
maps SamplingParams field by field (vllm_params.py) and runs it through zopilot.v1's
validation and engine; it answers token ids (the gateway detokenizes), streamed as
GenerateStreamChunks and ended by a GenerateComplete, or one GenerateComplete when
``stream`` is false. Abort cancels running requests by id: their streams end with
finish reason "abort". GetLoads reads the scheduler; FlushCache drops the prefix cache
the free KV slots hold; GetTokenizer serves the tokenizer's files. Embed, profiling and
SubscribeKvEvents are UNIMPLEMENTED with the reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import time
from collections.abc import AsyncIterator

import grpc

from ..config import ServerConfig
from ..errors import InvalidArgument, ServiceError
from ..generation.api.servicer import GenerationServicer
from ..generation.domain import Chunk, FinishReason, GenerationRequest
from ..generation.engine import Job, stream_chunks
from . import tokenizer_archive, vllm_params
from .mapping import ProtocolAdapter, server_version
from .pb.vllm import common_pb2 as cpb
from .pb.vllm import vllm_engine_pb2 as vpb
from .pb.vllm import vllm_engine_pb2_grpc as vpb_grpc

SERVICE = vpb.DESCRIPTOR.services_by_name["VllmEngine"].full_name
SERVER_TYPE = "zopilot-grpc"
FINISH_REASONS = {
    FinishReason.LENGTH: "length",
    FinishReason.EOS_TOKEN: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.CONSTRAINT: "stop",
    FinishReason.TIME_LIMIT: "abort",  # the request's deadline, not its length
    FinishReason.CANCELLED: "abort",
    FinishReason.SHUTDOWN: "abort",
}
FLUSH_WAIT_S = 30.0  # one scheduler step at most, even a long prefill
KV_EVENTS_UNAVAILABLE = (
    "SubscribeKvEvents: this server's prefix index keys blocks by a process-local hash "
    "chain that a gateway cannot recompute; route with cache_aware, prefix_hash or "
    "least_load (GetLoads) instead"
)


class Unimplemented(ServiceError):
    code = grpc.StatusCode.UNIMPLEMENTED


class VllmEngineServicer(vpb_grpc.VllmEngineServicer, ProtocolAdapter):
    """vllm.grpc.engine.VllmEngine for the one served model."""

    def __init__(self, config: ServerConfig, generation: GenerationServicer) -> None:
        super().__init__(config, generation)
        self._started = time.monotonic()
        self._jobs: dict[str, set[Job]] = {}  # running requests by id, for Abort
        self._tokenizer: tokenizer_archive.TokenizerArchive | None = None

    async def Generate(
        self, request: vpb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[vpb.GenerateResponse]:
        message, options = vllm_params.to_generate_request(request)
        which = request.WhichOneof("input")
        if which is None:
            raise InvalidArgument.single("input", "set tokenized or text")
        input_ids = list(request.tokenized.input_ids) if which == "tokenized" else None
        names = {
            **vllm_params.FIELD_NAMES,
            "prompt": "tokenized.input_ids" if which == "tokenized" else "text",
        }
        engine, domain = await self.domain_request(message, context, names, input_ids=input_ids)
        if options.stop_token_ids:
            domain = dataclasses.replace(domain, stop_token_ids=options.stop_token_ids)
        output = _Output(domain, options)
        running = self._jobs.setdefault(domain.request_id, set())

        def on_submit(job: Job) -> None:
            output.job = job
            running.add(job)

        try:
            async for chunk in stream_chunks(engine, domain, on_submit):
                for response in output.responses(chunk):
                    yield response
        finally:
            if output.job is not None:
                running.discard(output.job)
            if not running and self._jobs.get(domain.request_id) is running:
                del self._jobs[domain.request_id]

    async def Abort(
        self, request: vpb.AbortRequest, context: grpc.aio.ServicerContext
    ) -> vpb.AbortResponse:
        for request_id in request.request_ids:
            for job in list(self._jobs.get(request_id, ())):
                job.cancel()  # the stream ends within a step, finish reason "abort"
        return vpb.AbortResponse()

    async def HealthCheck(
        self, request: vpb.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> vpb.HealthCheckResponse:
        engine = self._generation.engine
        if engine is None:
            return vpb.HealthCheckResponse(healthy=False, message="the model is still loading")
        if engine.draining:
            return vpb.HealthCheckResponse(healthy=False, message="the server is draining")
        return vpb.HealthCheckResponse(healthy=True, message="serving")

    async def GetModelInfo(
        self, request: vpb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> vpb.GetModelInfoResponse:
        engine = self.ready_engine()
        loaded = engine.loaded
        config = loaded.model.config
        tokenizer = loaded.tokenizer
        return vpb.GetModelInfoResponse(
            model_path=loaded.model_id,
            is_generation=True,
            max_context_length=loaded.max_context_length,
            vocab_size=len(tokenizer),
            served_model_name=self.model_name(),
            tokenizer_path=loaded.model_id,
            model_type=getattr(config, "model_type", "") or "",
            architectures=list(getattr(config, "architectures", None) or [loaded.architecture]),
            eos_token_ids=sorted(loaded.eos_token_ids),
            pad_token_id=_id_or_minus_one(tokenizer.pad_token_id),
            bos_token_id=_id_or_minus_one(tokenizer.bos_token_id),
            max_req_input_len=max(loaded.max_context_length - 1, 0),
        )

    async def GetServerInfo(
        self, request: vpb.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> vpb.GetServerInfoResponse:
        engine = self._generation.engine
        return vpb.GetServerInfoResponse(
            active_requests=0 if engine is None else engine.active_count + engine.queued_count,
            is_paused=engine is not None and engine.draining,
            last_receive_timestamp=time.time(),
            uptime_seconds=time.monotonic() - self._started,
            server_type=SERVER_TYPE,
            data_parallel_size=1,
        )

    async def GetLoads(
        self, request: vpb.GetLoadsRequest, context: grpc.aio.ServicerContext
    ) -> vpb.GetLoadsResponse:
        if request.HasField("dp_rank") and request.dp_rank != 0:
            raise InvalidArgument.single("dp_rank", "this server has one data-parallel rank (0)")
        engine = self.ready_engine()
        load = engine.load()
        budget = max(load.kv_tokens_budget, 1)
        return vpb.GetLoadsResponse(
            timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(),
            version=server_version(),
            dp_rank_count=1,
            loads=[
                vpb.SchedulerLoad(
                    dp_rank=0,
                    num_running_reqs=load.running,
                    num_waiting_reqs=load.waiting,
                    num_total_reqs=load.running + load.waiting,
                    num_used_tokens=load.kv_tokens_used,
                    max_total_num_tokens=load.kv_tokens_budget,
                    token_usage=load.kv_tokens_used / budget,
                    cache_hit_rate=load.prefix_hit_tokens / max(load.prefix_query_tokens, 1),
                    utilization=load.kv_slots_used / max(load.kv_slots, 1),
                    max_running_requests=engine.limits.max_batch_size,
                    num_waiting_uncached_tokens=0,
                )
            ],
        )

    async def GetTokenizer(
        self, request: cpb.GetTokenizerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cpb.GetTokenizerChunk]:
        engine = self.ready_engine()
        if self._tokenizer is None:
            self._tokenizer = await asyncio.to_thread(
                tokenizer_archive.build, engine.loaded.tokenizer
            )
        archive = self._tokenizer
        chunks = archive.chunks()
        for index, data in enumerate(chunks):
            last = index == len(chunks) - 1
            yield cpb.GetTokenizerChunk(data=data, sha256=archive.sha256 if last else "")

    async def FlushCache(
        self, request: cpb.FlushCacheRequest, context: grpc.aio.ServicerContext
    ) -> cpb.FlushCacheResponse:
        engine = self.ready_engine()
        future = engine.flush_prefix_cache()
        try:
            blocks = await asyncio.wait_for(asyncio.wrap_future(future), FLUSH_WAIT_S)
        except asyncio.CancelledError:
            if not future.cancelled():
                raise
            return cpb.FlushCacheResponse(success=False, message="the engine is stopping")
        return cpb.FlushCacheResponse(
            success=True,
            message=f"dropped {blocks} cached prefix blocks of the free KV slots "
            "(running requests keep theirs until they finish)",
        )

    async def SubscribeKvEvents(
        self, request: cpb.SubscribeKvEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cpb.KvEventBatch]:
        raise Unimplemented(KV_EVENTS_UNAVAILABLE)
        yield  # pragma: no cover - makes this an async generator, as the stub expects

    async def Embed(
        self, request: vpb.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> vpb.EmbedResponse:
        raise Unimplemented("Embed: this server serves a causal LM for generation only")

    async def StartProfile(
        self, request: cpb.StartProfileRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ProfileResponse:
        raise Unimplemented("StartProfile: no profiler is configured on this server")

    async def StopProfile(
        self, request: cpb.StopProfileRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ProfileResponse:
        raise Unimplemented("StopProfile: no profiler is configured on this server")


class _Output:
    """One Generate call's responses: chunks of new token ids (streaming), then the
    GenerateComplete; or the GenerateComplete alone."""

    def __init__(self, domain: GenerationRequest, options: vllm_params.Options) -> None:
        self._domain = domain
        self._options = options
        self._ids: list[int] = []
        self._logprobs = vpb.OutputLogProbs()
        self.job: Job | None = None  # set once submitted (its cached prompt tokens)

    def responses(self, chunk: Chunk) -> list[vpb.GenerateResponse]:
        new = vpb.OutputLogProbs()
        for token in chunk.tokens:
            self._ids.append(token.id)
            if self._options.logprobs is not None:
                top = sorted(token.top_tokens, key=lambda t: -t.logprob)[: self._options.logprobs]
                for target in (new, self._logprobs):
                    target.token_logprobs.append(token.logprob)
                    target.token_ids.append(token.id)
                    target.top_logprobs.add(
                        values=[t.logprob for t in top], token_ids=[t.id for t in top]
                    )
        out = []
        if self._options.stream and chunk.tokens:
            piece = vpb.GenerateStreamChunk(
                token_ids=[t.id for t in chunk.tokens],
                prompt_tokens=len(self._domain.input_ids),
                completion_tokens=len(self._ids),
                cached_tokens=self._cached(),
            )
            if self._options.logprobs is not None:
                piece.output_logprobs.CopyFrom(new)
            out.append(vpb.GenerateResponse(chunk=piece))
        if chunk.completion is not None:
            out.append(vpb.GenerateResponse(complete=self._complete(chunk)))
        return out

    def _cached(self) -> int:
        return self.job.control.cached_tokens if self.job is not None else 0

    def _complete(self, chunk: Chunk) -> vpb.GenerateComplete:
        done = chunk.completion
        assert done is not None
        complete = vpb.GenerateComplete(
            output_ids=self._ids,
            finish_reason=FINISH_REASONS[done.finish_reason],
            prompt_tokens=done.usage.input_tokens,
            completion_tokens=done.usage.generated_tokens,
            cached_tokens=done.usage.cached_input_tokens,
            spec_draft_tokens=done.usage.draft_tokens,
            spec_accepted_tokens=done.usage.accepted_draft_tokens,
        )
        if self._options.logprobs is not None:
            complete.output_logprobs.CopyFrom(self._logprobs)
        if done.stop_sequence:
            complete.matched_stop_str = done.stop_sequence
        elif done.stop_token_id is not None:
            complete.matched_token_id = done.stop_token_id
        return complete


def _id_or_minus_one(token_id: int | None) -> int:
    return -1 if token_id is None else int(token_id)


__all__ = ["SERVICE", "VllmEngineServicer"]
