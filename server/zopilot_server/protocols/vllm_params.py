"""vLLM ``SamplingParams`` (vllm.grpc.engine) onto a zopilot.v1 GenerateRequest.

Field by field: what zopilot honours is mapped, and zopilot.v1's own validation then
checks ranges and limits (violations are renamed to the vLLM field the client set);
what it cannot honour is accepted only at its no-op value and is otherwise
INVALID_ARGUMENT naming the field, never silently ignored. proto3 scalars without
``optional`` cannot say "unset", so their zero means vLLM's default (top_p 0 = 1.0,
top_k 0 = off, repetition_penalty 0 = 1.0, n 0 = 1), as vLLM's own servicer reads them.
Torch-free and network-free: unit-testable on messages alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from zopilot_client.pb import generation_pb2 as pb

from ..errors import FieldViolation, InvalidArgument
from .pb.vllm import vllm_engine_pb2 as vpb

# vLLM's default when the (optional) temperature is unset.
DEFAULT_TEMPERATURE = 1.0
# zopilot.v1 field in a violation -> the vllm.grpc.engine field the client set.
FIELD_NAMES = {
    "max_new_tokens": "sampling_params.max_tokens",
    "min_new_tokens": "sampling_params.min_tokens",
    "temperature": "sampling_params.temperature",
    "top_p": "sampling_params.top_p",
    "top_k": "sampling_params.top_k",
    "repetition_penalty": "sampling_params.repetition_penalty",
    "stop_sequences": "sampling_params.stop",
    "truncate_input_tokens": "sampling_params.truncate_prompt_tokens",
    "top_n_tokens": "sampling_params.logprobs",
    "json_schema": "sampling_params.json_schema",
    "regex": "sampling_params.regex",
    "json_object": "sampling_params.json_object",
    "choice": "sampling_params.choice",
}
# Fields whose only honourable value is their zero (the vLLM no-op); anything else is
# refused with this reason.
_NO_OP = {
    "min_p": "min-p sampling is not supported by this server",
    "frequency_penalty": "is not supported (repetition_penalty is)",
    "presence_penalty": "is not supported (repetition_penalty is)",
}
# GenerateRequest fields this server cannot serve, with the reason.
_REQUEST_REFUSED = {
    "kv_transfer_params": "KV transfer (prefill/decode disaggregation) is not supported",
    "kv_transfer_params_json": "KV transfer (prefill/decode disaggregation) is not supported",
    "mm_inputs": "multimodal input is not supported (text models only)",
    "media_refs": "multimodal input is not supported (text models only)",
}


@dataclass(frozen=True)
class Options:
    """What the vLLM request asks beyond the zopilot.v1 message."""

    stop_token_ids: frozenset[int]
    logprobs: int | None  # None: none; N: the chosen token's logprob and the top N
    stream: bool


def to_generate_request(request: vpb.GenerateRequest) -> tuple[pb.GenerateRequest, Options]:
    """The zopilot.v1 message and the options for ``request``; every field that cannot
    be honoured is reported at once (INVALID_ARGUMENT)."""
    problems: list[FieldViolation] = []
    _refuse_request_fields(request, problems)
    params = request.sampling_params
    message = pb.GenerateRequest(request_id=request.request_id)
    # Token ids come back in every chunk: the gateway detokenizes them itself.
    message.return_token_details = True
    if request.WhichOneof("input") == "text":
        message.prompt = request.text
    message.temperature = (
        params.temperature if params.HasField("temperature") else DEFAULT_TEMPERATURE
    )
    if params.top_p:
        message.top_p = params.top_p
    if params.top_k:
        message.top_k = params.top_k
    if params.repetition_penalty:
        message.repetition_penalty = params.repetition_penalty
    for field, reason in _NO_OP.items():
        if getattr(params, field):
            problems.append(FieldViolation(f"sampling_params.{field}", reason))
    if params.HasField("max_tokens"):
        message.max_new_tokens = min(params.max_tokens, 2**31 - 1)
    message.min_new_tokens = min(params.min_tokens, 2**31 - 1)
    message.stop_sequences.extend(params.stop)
    message.include_stop_sequence = params.include_stop_str_in_output
    message.ignore_eos = params.ignore_eos
    if params.n > 1:
        problems.append(
            FieldViolation("sampling_params.n", "one sequence per request (n <= 1): send n calls")
        )
    logprobs = _logprobs(params, message, problems)
    if params.HasField("prompt_logprobs"):
        problems.append(FieldViolation("sampling_params.prompt_logprobs", "is not supported"))
    if params.HasField("seed"):
        if params.seed < 0:
            problems.append(FieldViolation("sampling_params.seed", "must be >= 0"))
        else:
            message.seed = params.seed
    if params.logit_bias:
        problems.append(FieldViolation("sampling_params.logit_bias", "is not supported"))
    if params.HasField("truncate_prompt_tokens"):
        if params.truncate_prompt_tokens > 0:
            message.truncate_input_tokens = params.truncate_prompt_tokens
        else:
            problems.append(
                FieldViolation(
                    "sampling_params.truncate_prompt_tokens",
                    "must be a positive token count (-1, the model maximum, is not supported)",
                )
            )
    _constraint(params, message, problems)
    if problems:
        raise InvalidArgument(problems)
    return message, Options(
        stop_token_ids=frozenset(params.stop_token_ids), logprobs=logprobs, stream=request.stream
    )


def _refuse_request_fields(request: vpb.GenerateRequest, problems: list[FieldViolation]) -> None:
    for field, reason in _REQUEST_REFUSED.items():
        if request.HasField(field):
            problems.append(FieldViolation(field, reason))
    if request.extra_mm_inputs:
        problems.append(FieldViolation("extra_mm_inputs", _REQUEST_REFUSED["mm_inputs"]))
    if request.HasField("data_parallel_rank") and request.data_parallel_rank != 0:
        problems.append(
            FieldViolation("data_parallel_rank", "this server has one data-parallel rank (0)")
        )


def _logprobs(
    params: vpb.SamplingParams, message: pb.GenerateRequest, problems: list[FieldViolation]
) -> int | None:
    """``logprobs``: None (unset), or N >= 0 alternatives per token (-1, all, refused)."""
    if not params.HasField("logprobs"):
        return None
    if params.logprobs < 0:
        problems.append(
            FieldViolation(
                "sampling_params.logprobs", "must be >= 0 (-1, the whole vocabulary, is refused)"
            )
        )
        return None
    message.top_n_tokens = params.logprobs
    return params.logprobs


def _constraint(
    params: vpb.SamplingParams, message: pb.GenerateRequest, problems: list[FieldViolation]
) -> None:
    """Structured output onto zopilot's llguidance path; grammar and structural_tag
    are refused. grammar_from_first_token needs nothing: no reasoning parser runs here,
    so every constraint starts at the first generated token."""
    which = params.WhichOneof("constraint")
    if which == "json_schema":
        message.json_schema = params.json_schema
    elif which == "regex":
        message.regex = params.regex
    elif which == "json_object":
        message.json_object = params.json_object
    elif which == "choice":
        message.choice.options.extend(params.choice.choices)
    elif which is not None:
        problems.append(
            FieldViolation(
                f"sampling_params.{which}",
                "is not supported (json_schema, regex, json_object and choice are)",
            )
        )
