"""The zopilot.v1.Generation servicer: protobuf in, engine, protobuf out. Nothing else.

Errors need no handling here: the RPC chain's ErrorMapping link (rpc_chain.py) turns
whatever a method raises into its status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import PurePath

import grpc
from zopilot_client.pb import generation_pb2 as pb
from zopilot_client.pb import generation_pb2_grpc as pb_grpc

from ...config import ServerConfig
from ..domain import (
    AdapterAdminDisabled,
    Chunk,
    Completion,
    GenerationRequest,
    ModelLoading,
    TokenDetail,
)
from ..engine import (
    GenerationEngine,
    complete_generation,
    stream_chunks,
)
from ..loading.adapters import Adapter, AdapterRegistry
from ..loading.model_loader import LoadedModel
from .requests import truncate_left
from .send_deadline import sent_within
from .validation import (
    check_tokenize_request,
    input_chars_limit,
    to_generation_request,
)

log = logging.getLogger(__name__)


class GenerationServicer(pb_grpc.GenerationServicer):
    """Serves generation once an engine is attached; UNAVAILABLE until then."""

    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        self.engine: GenerationEngine | None = None

    def ready_engine(self) -> GenerationEngine:
        if self.engine is None:
            raise ModelLoading
        return self.engine

    async def domain_request(
        self,
        request: pb.GenerateRequest,
        context: grpc.aio.ServicerContext,
        *,
        input_ids: Sequence[int] | None = None,
    ) -> tuple[GenerationEngine, GenerationRequest]:
        """The engine and the validated GenerationRequest for ``request`` (INVALID_ARGUMENT
        otherwise). The other protocols' adapters translate into a GenerateRequest and
        come through here, so every rule and limit is the same for all of them;
        ``input_ids`` is a prompt a gateway tokenized already (vllm_engine.py)."""
        engine = self.ready_engine()
        # Template rendering and tokenizing take time in proportion to the input (about
        # 0.6 s per MiB): in a thread, so health checks and other streams keep flowing.
        domain = await asyncio.to_thread(
            to_generation_request,
            request,
            loaded=engine.loaded,
            config=self._config,
            constraints=engine.constraints,
            grpc_time_remaining=context.time_remaining(),
            adapters=engine.adapters,
            input_ids=input_ids,
        )
        log.debug("request %s: %d input tokens", domain.request_id, len(domain.input_ids))
        return engine, domain

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        engine, domain = await self.domain_request(request, context)
        limit = self._config.send_timeout_s
        async for chunk in stream_chunks(engine, domain):
            with sent_within(limit, domain.request_id):
                yield chunk_to_pb(chunk, domain.request_id)

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        engine, domain = await self.domain_request(request, context)
        return chunk_to_pb(await complete_generation(engine, domain), domain.request_id)

    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        engine = self.ready_engine()
        check_tokenize_request(request, input_chars_limit(self._config, engine.loaded))
        return await asyncio.to_thread(tokenize, engine, request)

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        return model_info(self.ready_engine(), self._config)

    async def LoadAdapter(
        self, request: pb.LoadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdapterInfo:
        registry = self._admin_registry()
        # Reading and checking the files takes a while: not on the event loop.
        return adapter_to_pb(await asyncio.to_thread(registry.load, request.name, request.path))

    async def UnloadAdapter(
        self, request: pb.UnloadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadAdapterResponse:
        adapter = self._admin_registry().unload(request.name)
        return pb.UnloadAdapterResponse(running_requests=adapter.running)

    async def ListAdapters(
        self, request: pb.ListAdaptersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAdaptersResponse:
        registry = self.ready_engine().adapters
        return pb.ListAdaptersResponse(
            adapters=[adapter_to_pb(a) for a in registry.list()],
            max_loras=registry.max_loras,
            max_lora_rank=registry.max_rank,
        )

    def _admin_registry(self) -> AdapterRegistry:
        if not self._config.adapter_admin:
            raise AdapterAdminDisabled(
                "loading and unloading adapters is off on this server (--adapter-admin)"
            )
        return self.ready_engine().adapters


def tokenize(engine: GenerationEngine, request: pb.TokenizeRequest) -> pb.TokenizeResponse:
    tokenizer = engine.loaded.tokenizer
    encoding = tokenizer(
        request.text, add_special_tokens=request.add_special_tokens, return_offsets_mapping=True
    )
    ids = list(encoding["input_ids"])
    offsets = list(encoding["offset_mapping"])
    ids, truncated = truncate_left(ids, request.truncate_input_tokens)
    offsets = offsets[len(offsets) - len(ids) :]
    return pb.TokenizeResponse(
        ids=ids,
        tokens=tokenizer.convert_ids_to_tokens(ids),
        offsets=[pb.Offset(start=s, end=e) for s, e in offsets],
        token_count=len(ids),
        truncated=truncated,
    )


def model_info(engine: GenerationEngine, config: ServerConfig) -> pb.ModelInfo:
    loaded = engine.loaded
    quant = loaded.quantization
    tokenizer = loaded.tokenizer
    ngram = engine.speculative_ngram
    return pb.ModelInfo(
        model_id=loaded.model_id,
        architecture=loaded.architecture,
        parameter_count=loaded.parameter_count,
        dtype=loaded.dtype,
        device=loaded.device,
        quantization=pb.Quantization(
            mode=quant.mode,
            quant_type=quant.quant_type,
            compute_dtype=quant.compute_dtype,
            double_quant=quant.double_quant,
            int8_threshold=quant.int8_threshold,
        ),
        memory_footprint_bytes=loaded.memory_footprint_bytes,
        max_context_length=loaded.max_context_length,
        has_chat_template=loaded.has_chat_template,
        eos_token=tokenizer.eos_token or "",
        eos_token_id=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else -1,
        vocab_size=len(tokenizer),
        default_max_new_tokens=config.default_max_new_tokens,
        max_new_tokens_limit=config.max_new_tokens_limit,
        max_stop_sequences=config.max_stop_sequences,
        max_top_n_tokens=config.max_top_n_tokens,
        load_seconds=loaded.load_seconds,
        constrained_decoding=engine.constraints.available,
        constraint_engine=engine.constraints.engine,
        max_constraint_bytes=config.max_constraint_bytes,
        served_model_name=served_model_name(config, loaded),
        kv_cache=pb.KvCache(
            mode=engine.arena.mode,
            slots=engine.arena.slots,
            tokens_per_slot=engine.arena.tokens_per_slot,
            bytes=engine.arena.bytes,
            serial_reason=engine.arena.reason,
            prefix_cache=engine.arena.prefix_cache,
            prefix_block_tokens=engine.arena.prefix_block_tokens,
            packed_step=engine.arena.mode == "arena",
            max_step_stall=engine.limits.max_step_stall,
            max_prefill_tokens=engine.limits.max_prefill_tokens,
            speculative_tokens=engine.limits.speculative_tokens,
            speculative_ngram_min=ngram[0] if ngram else 0,
            speculative_ngram_max=ngram[1] if ngram else 0,
        ),
        adapters=[adapter_to_pb(a) for a in engine.adapters.list()],
        max_loras=engine.adapters.max_loras,
        max_lora_rank=engine.adapters.max_rank,
    )


def adapter_to_pb(adapter: Adapter) -> pb.AdapterInfo:
    return pb.AdapterInfo(
        name=adapter.name,
        path=adapter.path,
        rank=adapter.rank,
        scaling=adapter.scaling,
        target_modules=list(adapter.target_modules),
        bytes=adapter.bytes,
        base_model=adapter.base_model,
    )


def served_model_name(config: ServerConfig, loaded: LoadedModel) -> str:
    """--served-model-name, or the model directory's name (a .gguf file's stem; the
    embedded model's name when --model is empty)."""
    if config.served_model_name:
        return config.served_model_name
    path = PurePath(loaded.model_id.rstrip("/\\") or loaded.model_id)
    return path.stem if path.suffix == ".gguf" else path.name or loaded.model_id


def token_to_pb(token: TokenDetail) -> pb.TokenDetail:
    return pb.TokenDetail(
        id=token.id,
        text=token.text,
        logprob=token.logprob,
        top_tokens=[pb.TopToken(id=t.id, text=t.text, logprob=t.logprob) for t in token.top_tokens],
    )


def completion_to_pb(completion: Completion, response: pb.GenerateResponse) -> None:
    response.finish_reason = completion.finish_reason.value
    response.stop_sequence = completion.stop_sequence
    response.seed = completion.seed
    response.incomplete = completion.incomplete
    usage, timings = completion.usage, completion.timings
    response.usage.CopyFrom(
        pb.Usage(
            input_tokens=usage.input_tokens,
            generated_tokens=usage.generated_tokens,
            input_truncated=usage.input_truncated,
            cached_input_tokens=usage.cached_input_tokens,
            draft_tokens=usage.draft_tokens,
            accepted_draft_tokens=usage.accepted_draft_tokens,
            adapter=usage.adapter,
        )
    )
    response.timings.CopyFrom(
        pb.Timings(
            queue_ms=timings.queue_ms,
            time_to_first_token_ms=timings.time_to_first_token_ms,
            generation_ms=timings.generation_ms,
            tokens_per_second=timings.tokens_per_second,
            total_ms=timings.total_ms,
        )
    )


def chunk_to_pb(chunk: Chunk, request_id: str) -> pb.GenerateResponse:
    response = pb.GenerateResponse(
        text=chunk.text,
        tokens=[token_to_pb(t) for t in chunk.tokens],
        request_id=request_id,
    )
    if chunk.completion is not None:
        completion_to_pb(chunk.completion, response)
    return response
