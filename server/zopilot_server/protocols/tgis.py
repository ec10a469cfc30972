"""IBM TGIS ``fmaas.GenerationService`` over the same engine as zopilot.v1.

TGIS maps almost one to one onto zopilot.v1 Generation: its Parameters become a
``zopilot.v1.GenerateRequest`` that goes through zopilot.v1's validation and engine
(``ProtocolAdapter.domain_request``). What TGIS can ask for and zopilot cannot do
(prompt-tuning prefixes, typical_p, a length penalty, token ranks, input token details)
is INVALID_ARGUMENT naming the field, never silently ignored. GenerateStream's first
message carries only ``input_token_count``, as TGIS sends it; Generate runs a batch's
requests concurrently (they join the engine's running batch like any others).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from zopilot_client.pb import generation_pb2 as pb

from ..errors import FieldViolation, InvalidArgument
from ..generation.api.servicer import tokenize
from ..generation.api.validation import check_tokenize_request, input_chars_limit
from ..generation.domain import Chunk, FinishReason, TokenDetail
from ..generation.engine import complete_generation, stream_chunks
from .mapping import ProtocolAdapter, renamed
from .pb.fmaas import generation_pb2 as tpb
from .pb.fmaas import generation_pb2_grpc as tpb_grpc

SERVICE = tpb.DESCRIPTOR.services_by_name["GenerationService"].full_name

STOP_REASONS = {
    FinishReason.LENGTH: tpb.MAX_TOKENS,
    FinishReason.EOS_TOKEN: tpb.EOS_TOKEN,
    FinishReason.STOP_SEQUENCE: tpb.STOP_SEQUENCE,
    FinishReason.CONSTRAINT: tpb.EOS_TOKEN,  # no constraints over TGIS; not reached
    FinishReason.TIME_LIMIT: tpb.TIME_LIMIT,
    FinishReason.CANCELLED: tpb.CANCELLED,
    FinishReason.SHUTDOWN: tpb.CANCELLED,
}
# zopilot.v1 field in a violation -> the TGIS field the client set.
FIELD_NAMES = {
    "prompt": "request.text",
    "max_new_tokens": "params.stopping.max_new_tokens",
    "min_new_tokens": "params.stopping.min_new_tokens",
    "time_limit_ms": "params.stopping.time_limit_millis",
    "stop_sequences": "params.stopping.stop_sequences",
    "temperature": "params.sampling.temperature",
    "top_k": "params.sampling.top_k",
    "top_p": "params.sampling.top_p",
    "repetition_penalty": "params.decoding.repetition_penalty",
    "truncate_input_tokens": "params.truncate_input_tokens",
    "adapter": "adapter_id",
    "top_n_tokens": "params.response.top_n_tokens",
}


class TgisServicer(tpb_grpc.GenerationServiceServicer, ProtocolAdapter):
    """fmaas.GenerationService for the one served model."""

    async def GenerateStream(
        self, request: tpb.SingleGenerationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tpb.GenerationResponse]:
        self._check_target(request)
        message, options = to_generate_request(request.request.text, request.params)
        message.adapter = request.adapter_id
        message.return_token_details = True  # each chunk's tokens: generated_token_count
        engine, domain = await self.domain_request(message, context, FIELD_NAMES)
        yield tpb.GenerationResponse(
            input_token_count=len(domain.input_ids),
            text=request.request.text if options.input_text else "",
        )
        generated = 0
        async for chunk in stream_chunks(engine, domain):
            response = _chunk_response(chunk, options, sampled=not domain.sampling.greedy)
            generated += len(chunk.tokens)
            if chunk.completion is not None:
                generated = chunk.completion.usage.generated_tokens
            response.generated_token_count = generated
            yield response

    async def Generate(
        self, request: tpb.BatchedGenerationRequest, context: grpc.aio.ServicerContext
    ) -> tpb.BatchedGenerationResponse:
        self._check_target(request)
        limit = self._config.max_batch_size + self._config.max_queue
        if not request.requests:
            raise InvalidArgument.single("requests", "is required")
        if len(request.requests) > limit:
            raise InvalidArgument.single(
                "requests", f"at most {limit} per call (the batch plus the queue)"
            )
        prepared = []
        for index, item in enumerate(request.requests):
            message, options = to_generate_request(item.text, request.params)
            message.adapter = request.adapter_id
            names = {**FIELD_NAMES, "prompt": f"requests[{index}].text"}
            engine, domain = await self.domain_request(message, context, names)
            prepared.append((engine, domain, options, item.text))
        tasks = [
            asyncio.ensure_future(complete_generation(engine, domain))
            for engine, domain, _, _ in prepared
        ]
        try:
            chunks = await asyncio.gather(*tasks)
        finally:
            for task in tasks:  # one failed (or the call was cancelled): stop the rest
                task.cancel()
        responses = []
        for (_, domain, options, text), chunk in zip(prepared, chunks, strict=True):
            response = _chunk_response(chunk, options, sampled=not domain.sampling.greedy)
            response.input_token_count = len(domain.input_ids)
            if chunk.completion is not None:
                response.generated_token_count = chunk.completion.usage.generated_tokens
            if options.input_text:
                response.text = text + response.text
            responses.append(response)
        return tpb.BatchedGenerationResponse(responses=responses)

    async def Tokenize(
        self, request: tpb.BatchedTokenizeRequest, context: grpc.aio.ServicerContext
    ) -> tpb.BatchedTokenizeResponse:
        self._check_target(request)
        engine = self.ready_engine()
        limit = input_chars_limit(self._config, engine.loaded)
        messages = []
        for index, item in enumerate(request.requests):
            message = pb.TokenizeRequest(
                text=item.text,
                add_special_tokens=True,
                truncate_input_tokens=request.truncate_input_tokens,
            )
            try:
                check_tokenize_request(message, limit)
            except InvalidArgument as error:
                raise renamed(error, {"text": f"requests[{index}].text"}) from None
            messages.append(message)
        if sum(len(m.text) for m in messages) > limit:
            raise InvalidArgument.single("requests", f"more than {limit} characters in all")
        results = await asyncio.to_thread(lambda: [tokenize(engine, m) for m in messages])
        responses = []
        for result in results:
            response = tpb.TokenizeResponse(token_count=result.token_count)
            if request.return_tokens:
                response.tokens.extend(result.tokens)
            if request.return_offsets:
                for offset in result.offsets:
                    response.offsets.add(start=offset.start, end=offset.end)
            responses.append(response)
        return tpb.BatchedTokenizeResponse(responses=responses)

    async def ModelInfo(
        self, request: tpb.ModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> tpb.ModelInfoResponse:
        self._check_target(request)
        loaded = self.ready_engine().loaded
        return tpb.ModelInfoResponse(
            model_kind=tpb.ModelInfoResponse.DECODER_ONLY,
            max_sequence_length=loaded.max_context_length,
            max_new_tokens=self._config.max_new_tokens_limit,
        )

    def _check_target(self, request: Any) -> None:
        """model_id empty or the served name (NOT_FOUND); no prompt-tuning prefix."""
        self.check_model(request.model_id, "model_id", allow_empty=True)
        has_prefix = "prefix_id" in request.DESCRIPTOR.fields_by_name
        if has_prefix and request.HasField("prefix_id"):
            raise InvalidArgument.single("prefix_id", "prompt-tuning prefixes are not supported")


class ResponseOptions:
    """What a response carries besides the text (TGIS ResponseOptions we honour)."""

    def __init__(self, response: tpb.ResponseOptions) -> None:
        self.input_text = response.input_text
        self.tokens = response.generated_tokens
        self.logprobs = response.token_logprobs
        self.top_n = response.top_n_tokens


def to_generate_request(
    text: str, params: tpb.Parameters
) -> tuple[pb.GenerateRequest, ResponseOptions]:
    """TGIS Parameters onto a zopilot.v1 GenerateRequest; what cannot be honoured is
    refused here (all at once), the rest is left to zopilot.v1's validation."""
    problems: list[FieldViolation] = []
    message = pb.GenerateRequest(prompt=text)
    sampling, stopping, decoding = params.sampling, params.stopping, params.decoding
    if params.method == tpb.SAMPLE:
        # TGIS: 0 means "disabled" for each of these, i.e. 1.0 / off.
        message.temperature = sampling.temperature or 1.0
        if sampling.top_k:
            message.top_k = sampling.top_k
        if sampling.top_p:
            message.top_p = sampling.top_p
        if sampling.HasField("seed"):
            message.seed = sampling.seed
    elif params.HasField("sampling") and params.sampling.ListFields():
        problems.append(
            FieldViolation("params.sampling", "applies only with method SAMPLE (method is GREEDY)")
        )
    if sampling.typical_p not in (0.0, 1.0):
        problems.append(FieldViolation("params.sampling.typical_p", "is not supported"))
    if stopping.max_new_tokens:
        message.max_new_tokens = stopping.max_new_tokens
    message.min_new_tokens = stopping.min_new_tokens
    message.time_limit_ms = stopping.time_limit_millis
    message.stop_sequences.extend(stopping.stop_sequences)
    message.include_stop_sequence = stopping.include_stop_sequence
    if decoding.repetition_penalty:
        message.repetition_penalty = decoding.repetition_penalty
    if decoding.HasField("length_penalty"):
        problems.append(FieldViolation("params.decoding.length_penalty", "is not supported"))
    message.truncate_input_tokens = params.truncate_input_tokens
    response = params.response
    if response.input_tokens:
        problems.append(FieldViolation("params.response.input_tokens", "is not supported"))
    if response.token_ranks:
        problems.append(FieldViolation("params.response.token_ranks", "is not supported"))
    if response.generated_tokens or response.top_n_tokens:
        message.return_token_details = True
        message.top_n_tokens = response.top_n_tokens
    if problems:
        raise InvalidArgument(problems)
    return message, ResponseOptions(response)


def _chunk_response(
    chunk: Chunk, options: ResponseOptions, *, sampled: bool
) -> tpb.GenerationResponse:
    response = tpb.GenerationResponse(text=chunk.text)
    if options.tokens:
        response.tokens.extend(_token_info(t, options) for t in chunk.tokens)
    completion = chunk.completion
    if completion is not None:
        response.stop_reason = STOP_REASONS[completion.finish_reason]
        response.stop_sequence = completion.stop_sequence
        if sampled:
            response.seed = completion.seed
    return response


def _token_info(token: TokenDetail, options: ResponseOptions) -> tpb.TokenInfo:
    info = tpb.TokenInfo(text=token.text)
    if options.logprobs:
        info.logprob = token.logprob
    for top in token.top_tokens[: options.top_n]:
        info.top_tokens.add(text=top.text, logprob=top.logprob)
    return info


__all__ = ["SERVICE", "TgisServicer", "to_generate_request"]
