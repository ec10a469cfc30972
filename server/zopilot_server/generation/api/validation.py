"""GenerateRequest / TokenizeRequest (protobuf) to domain objects, or INVALID_ARGUMENT.

Every rule lives here, every violation is collected (a client fixing its request sees
all problems at once) and reported as a google.rpc.BadRequest field violation.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Sequence

from zopilot_client.pb import generation_pb2 as pb

from ...config import ADAPTER_NAME, ServerConfig
from ...errors import FieldViolation, InvalidArgument, Message, request_id_problem
from ...json_schema_text import SchemaTextProblem, parse_schema
from ..domain import (
    AdapterRejected,
    ConstraintUnavailable,
    GenerationRequest,
    LoraAdapter,
    SamplingParams,
)
from ..loading.adapters import AdapterRegistry
from ..loading.model_loader import LoadedModel
from ..model.constraints import ConstraintCompiler, ConstraintKind
from . import special_tokens
from .requests import (
    CHARS_PER_TOKEN_BOUND,
    ChatTurn,
    deadline,
    encode,
    new_request_id,
    render_chat,
    truncate_left,
)

MAX_TEMPERATURE = 100.0
# Below this, dividing the logits by the temperature overflows to inf (and sampling fails
# with "probability tensor contains inf/nan"); it is greedy decoding in all but name,
# so it runs as greedy, as in vLLM.
GREEDY_BELOW_TEMPERATURE = 1e-5
# A penalty near 0 divides positive logits by it: the same overflow. 0.01 already
# multiplies a logit by 100, far past any useful setting.
MIN_REPETITION_PENALTY = 0.01
MAX_REPETITION_PENALTY = 10.0


class _Violations:
    """Collects field violations; raises them all at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, message: Message | str, **kwargs: object) -> None:
        text = message.format(**kwargs) if isinstance(message, Message) else message
        self.items.append(FieldViolation(field, text))

    def check_range(
        self, field: str, value: float, low: float, high: float, *, low_open: bool = False
    ) -> None:
        below = value <= low if low_open else value < low
        if math.isnan(value) or below or value > high:
            bracket = "(" if low_open else "["
            self.add(field, Message.OUT_OF_RANGE, range=f"{bracket}{low:g}, {high:g}]", value=value)

    def check_not_negative(self, field: str, value: int) -> None:
        """For counts with no upper bound beyond their int32 type."""
        if value < 0:
            self.add(field, Message.NEGATIVE, value=value)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def to_generation_request(
    message: pb.GenerateRequest,
    *,
    loaded: LoadedModel,
    config: ServerConfig,
    constraints: ConstraintCompiler | None = None,
    grpc_time_remaining: float | None = None,
    adapters: AdapterRegistry | None = None,
    input_ids: Sequence[int] | None = None,
) -> GenerationRequest:
    """Validate ``message`` and build the GenerationRequest the engine runs.

    ``input_ids``: the prompt already tokenized (a gateway tokenizes and applies the chat
    template itself); ``message`` then carries no prompt and no messages, and every id
    must be in the vocabulary. Violations about the input name ``prompt``.

    Runs in a worker thread (the servicer's ``asyncio.to_thread``): tokenizing and
    compiling a constraint take time in proportion to their size."""
    arrival = time.monotonic()
    v = _Violations()
    problem = request_id_problem(message.request_id)
    if problem:
        v.add("request_id", problem)
    max_new = _check_limits(message, config, v)
    _check_stop_sequences(message, config, v)
    constraint_source = _constraint_source(message, config, v)
    if message.adapter and not ADAPTER_NAME.fullmatch(message.adapter):
        v.add("adapter", "adapter names are 1..64 letters, digits, '.', '_' or '-'")
    if input_ids is not None:
        input_field = "prompt"
        ids = _checked_ids(message, input_ids, loaded, v)
        v.raise_if_any()
        adapter = _adapter(message.adapter, adapters)
    else:
        max_chars = input_chars_limit(config, loaded)
        _check_input_chars(message, max_chars, v)
        v.raise_if_any()
        adapter = _adapter(message.adapter, adapters)
        text = _render_input(message, loaded, v)
        v.raise_if_any()
        input_field = "messages" if message.messages else "prompt"
        ids = _encode_input(message, loaded, config, text, v)
        if not ids:
            v.add(input_field, Message.EMPTY_AFTER_TOKENIZE)
    ids, truncated = truncate_left(ids, message.truncate_input_tokens)
    if len(ids) + max_new > loaded.max_context_length:
        v.add(
            input_field,
            Message.PROMPT_TOO_LONG,
            tokens=len(ids),
            max_new=max_new,
            context=loaded.max_context_length,
        )
    v.raise_if_any()
    constraint = None
    if constraint_source is not None:
        if constraints is None:
            raise ConstraintUnavailable("constrained decoding is not available on this server")
        constraint = constraints.compile(*constraint_source)

    top_n = message.top_n_tokens
    return GenerationRequest(
        request_id=new_request_id(message.request_id),
        input_ids=tuple(ids),
        input_truncated=truncated,
        max_new_tokens=max_new,
        min_new_tokens=message.min_new_tokens,
        sampling=_sampling(message),
        stop_sequences=tuple(message.stop_sequences),
        include_stop_sequence=message.include_stop_sequence,
        ignore_eos=message.ignore_eos,
        private=message.skip_prefix_cache,
        speculative=not message.skip_speculation,
        token_details=message.return_token_details or top_n > 0,
        top_n_tokens=top_n,
        deadline=_deadline(message, config, arrival, grpc_time_remaining),
        arrival=arrival,
        constraint=constraint,
        adapter=adapter,
    )


def _adapter(name: str, adapters: AdapterRegistry | None) -> LoraAdapter | None:
    """The loaded adapter ``name`` names (None for the base model); AdapterNotFound."""
    if not name:
        return None
    if adapters is None:
        raise AdapterRejected("this server has no adapter registry", fits=False)
    return adapters.get(name)


def _checked_ids(
    message: pb.GenerateRequest, ids: Sequence[int], loaded: LoadedModel, v: _Violations
) -> list[int]:
    """Pre-tokenized input: present, alone, and every id one the model has."""
    if message.prompt or message.messages:
        v.add("prompt", Message.TOKENS_XOR_TEXT)
    if not ids:
        v.add("prompt", Message.REQUIRED)
    vocab = max(getattr(loaded.model.config, "vocab_size", 0) or 0, len(loaded.tokenizer))
    for index, token in enumerate(ids):
        if not 0 <= token < vocab:
            v.add("prompt", Message.TOKEN_OUT_OF_VOCAB, value=token, index=index, limit=vocab)
            break  # one is enough: a million bad ids say nothing more
    return list(ids)


def _constraint_source(
    message: pb.GenerateRequest, config: ServerConfig, v: _Violations
) -> tuple[ConstraintKind, str] | None:
    """The constraint's kind and text to compile (choice options as a JSON list), after
    the checks that need no grammar engine: size, JSON, non-empty options."""
    which = message.WhichOneof("constraint")
    if which is None:
        return None
    kind = ConstraintKind(which)
    limit = config.max_constraint_bytes
    if kind is ConstraintKind.JSON_OBJECT:
        if not message.json_object:
            v.add("json_object", "must be true when set (leave the constraint unset for free text)")
            return None
        return kind, ""
    if kind is ConstraintKind.CHOICE:
        options = list(message.choice.options)
        size = sum(len(option.encode("utf-8")) for option in options)
        if not options:
            v.add("choice.options", Message.REQUIRED)
        elif size > limit:
            v.add("choice.options", Message.TOO_MANY_BYTES, value=size, limit=limit)
        elif not all(options):
            v.add("choice.options", Message.EMPTY_ITEM, index=options.index(""))
        else:
            return kind, json.dumps(options)
        return None
    text = message.json_schema if kind is ConstraintKind.JSON_SCHEMA else message.regex
    size = len(text.encode("utf-8"))
    if not text:
        v.add(which, Message.REQUIRED)
        return None
    if size > limit:
        v.add(which, Message.TOO_MANY_BYTES, value=size, limit=limit)
        return None
    if kind is ConstraintKind.JSON_SCHEMA:
        try:
            parse_schema(text, max_bytes=limit)
        except SchemaTextProblem as problem:
            v.add(which, str(problem))
            return None
    return kind, text


def _check_limits(message: pb.GenerateRequest, config: ServerConfig, v: _Violations) -> int:
    """Check numeric fields; return the effective max_new_tokens."""
    max_new = config.default_max_new_tokens
    if message.HasField("max_new_tokens"):
        max_new = message.max_new_tokens
        v.check_range("max_new_tokens", max_new, 1, config.max_new_tokens_limit)
    v.check_range("min_new_tokens", message.min_new_tokens, 0, max(max_new, 0))
    if message.HasField("temperature"):
        v.check_range("temperature", message.temperature, 0, MAX_TEMPERATURE)
    if message.HasField("top_p"):
        v.check_range("top_p", message.top_p, 0, 1, low_open=True)
    if message.HasField("top_k"):
        v.check_not_negative("top_k", message.top_k)
    if message.HasField("repetition_penalty"):
        v.check_range(
            "repetition_penalty",
            message.repetition_penalty,
            MIN_REPETITION_PENALTY,
            MAX_REPETITION_PENALTY,
        )
    v.check_not_negative("truncate_input_tokens", message.truncate_input_tokens)
    v.check_not_negative("time_limit_ms", message.time_limit_ms)
    v.check_range("top_n_tokens", message.top_n_tokens, 0, config.max_top_n_tokens)
    return max_new


def _check_stop_sequences(
    message: pb.GenerateRequest, config: ServerConfig, v: _Violations
) -> None:
    stops = message.stop_sequences
    if len(stops) > config.max_stop_sequences:
        # The count alone rejects the request: judging a million items says nothing more.
        v.add("stop_sequences", Message.TOO_MANY, limit=config.max_stop_sequences, value=len(stops))
        return
    for index, stop in enumerate(stops):
        if not stop:
            v.add("stop_sequences", Message.EMPTY_ITEM, index=index)
        elif len(stop) > config.max_stop_sequence_chars:
            v.add(
                "stop_sequences",
                Message.TOO_LONG_ITEM,
                index=index,
                limit=config.max_stop_sequence_chars,
            )


def input_chars_limit(config: ServerConfig, loaded: LoadedModel) -> int:
    """Most characters a prompt (or all messages together, or a Tokenize text) may have.

    Checked before any tokenizing, so that one request cannot occupy a core for seconds
    and gigabytes: ``--max-input-chars``, or by default the model context times
    ``CHARS_PER_TOKEN_BOUND`` (a prompt that long cannot fit even with unusually long
    tokens; ``truncate_input_tokens`` keeps working for anything below it)."""
    if config.max_input_chars > 0:
        return config.max_input_chars
    return max(loaded.max_context_length, 1) * CHARS_PER_TOKEN_BOUND


def _check_input_chars(message: pb.GenerateRequest, limit: int, v: _Violations) -> None:
    if message.prompt:
        if len(message.prompt) > limit:
            v.add("prompt", Message.TOO_MANY_CHARS, value=len(message.prompt), limit=limit)
        return
    total = sum(len(m.content) + len(m.role) for m in message.messages)
    if total > limit:
        v.add("messages", Message.TOO_MANY_CHARS, value=total, limit=limit)


def _render_input(message: pb.GenerateRequest, loaded: LoadedModel, v: _Violations) -> str:
    """The text to tokenize: the raw prompt, or the chat messages through the template."""
    if message.prompt and message.messages:
        v.add("prompt", Message.PROMPT_XOR_MESSAGES)
        return ""
    if message.prompt:
        return message.prompt
    if not message.messages:
        v.add("prompt", Message.PROMPT_OR_MESSAGES)
        return ""
    for index, turn in enumerate(message.messages):
        if not turn.role.strip():
            v.add(f"messages[{index}].role", Message.EMPTY_ROLE)
    if not loaded.has_chat_template:
        v.add("messages", Message.NO_CHAT_TEMPLATE)
    if v.items:
        return ""
    try:
        return render_chat(loaded, [ChatTurn(m.role, m.content) for m in message.messages])
    except Exception as exc:  # noqa: BLE001 - jinja errors are the client's input problem
        v.add("messages", f"the chat template rejected the messages: {exc}")
        return ""


def _encode_input(
    message: pb.GenerateRequest,
    loaded: LoadedModel,
    config: ServerConfig,
    text: str,
    v: _Violations,
) -> list[int]:
    """The input's token ids; special-token text in the user's text stays text when the
    server or the request asks (special_tokens.py)."""
    if not (config.special_tokens_as_text or message.special_tokens_as_text):
        return encode(loaded.tokenizer, text, add_special_tokens=not message.messages)
    if not message.messages:
        return special_tokens.encode_prompt(loaded.tokenizer, text, add_special_tokens=True)
    contents = [turn.content for turn in message.messages]
    ids = special_tokens.encode_chat(loaded.tokenizer, text, contents)
    if ids is None:
        v.add(
            "messages",
            "the chat template rewrites the message contents, so special_tokens_as_text "
            "cannot tell them from its markup",
        )
        v.raise_if_any()
    return ids or []


def check_tokenize_request(message: pb.TokenizeRequest, max_chars: int) -> None:
    """Raise INVALID_ARGUMENT (every violation) for a bad TokenizeRequest."""
    v = _Violations()
    if not message.text:
        v.add("text", Message.REQUIRED)
    elif len(message.text) > max_chars:
        v.add("text", Message.TOO_MANY_CHARS, value=len(message.text), limit=max_chars)
    v.check_not_negative("truncate_input_tokens", message.truncate_input_tokens)
    v.raise_if_any()


def _sampling(message: pb.GenerateRequest) -> SamplingParams:
    temperature = message.temperature if message.HasField("temperature") else 0.0
    if temperature < GREEDY_BELOW_TEMPERATURE:
        temperature = 0.0
    return SamplingParams(
        temperature=temperature,
        top_p=message.top_p if message.HasField("top_p") else 1.0,
        top_k=message.top_k if message.HasField("top_k") else 0,
        repetition_penalty=(
            message.repetition_penalty if message.HasField("repetition_penalty") else 1.0
        ),
        seed=message.seed if message.HasField("seed") else secrets.randbits(63),
    )


def _deadline(
    message: pb.GenerateRequest,
    config: ServerConfig,
    arrival: float,
    grpc_time_remaining: float | None,
) -> float | None:
    """The earlier of time_limit_ms and the gRPC deadline less the delivery margin."""
    return deadline(
        arrival,
        time_limit_s=message.time_limit_ms / 1000 if message.time_limit_ms > 0 else None,
        time_remaining_s=grpc_time_remaining,
        margin_s=config.deadline_margin_ms / 1000,
    )
