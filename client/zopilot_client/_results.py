"""Typed results: plain frozen dataclasses built from the protobuf responses.

Callers should not need protobuf to use the results, but nothing is hidden either: every
result keeps the message it came from in ``.raw``. ``to_dict()`` gives a JSON-ready view
(the CLI's ``--json`` output) without the raw messages.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .pb import documents_pb2, generation_pb2

R = TypeVar("R")


class _Result:
    """What every result shares: ``from_pb`` (same-named fields) and ``to_dict()``.

    Results that came from a whole response keep it in ``raw``, for callers who need a
    field this library does not surface yet; it is left out of equality and repr, so
    results compare and print as plain data.
    """

    @classmethod
    def from_pb(cls: type[R], message: Any) -> R:
        return _copy(cls, message)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: enums as their values, the raw messages left out."""
        return _jsonable(self)


def _copy(cls: type[R], message: Any, **overrides: Any) -> R:
    """``cls`` from the same-named fields of ``message``; ``overrides`` for the rest."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in overrides]  # type: ignore[arg-type]
    return cls(**{name: getattr(message, name) for name in names}, **overrides)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name != "raw"
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


# --------------------------------------------------------------------------- chat input


@dataclass(frozen=True)
class ChatMessage(_Result):
    """One chat turn, rendered by the server with the model's chat template."""

    role: str
    content: str

    @classmethod
    def coerce(cls, value: MessageLike) -> ChatMessage:
        """Accept a ChatMessage, a ``{"role", "content"}`` mapping or a (role, content) pair."""
        if isinstance(value, ChatMessage):
            return value
        if isinstance(value, Mapping):
            return cls(role=str(value["role"]), content=str(value["content"]))
        if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
            return cls(role=str(value[0]), content=str(value[1]))
        raise TypeError(
            f"a chat message must be a ChatMessage, a mapping with 'role' and 'content', "
            f"or a (role, content) pair; got {value!r}"
        )

    def to_pb(self) -> generation_pb2.ChatMessage:
        return generation_pb2.ChatMessage(role=self.role, content=self.content)


MessageLike = ChatMessage | Mapping[str, str] | Sequence[str]
"""What ``messages`` may contain."""

PromptLike = str | Sequence[MessageLike]
"""A raw prompt (``str``) or a conversation (a sequence of messages)."""


# ----------------------------------------------------------------------- generation


class FinishReason(str, enum.Enum):
    """Why generation ended (zopilot.v1.FinishReason)."""

    LENGTH = "length"
    EOS_TOKEN = "eos_token"
    STOP_SEQUENCE = "stop_sequence"
    CANCELLED = "cancelled"
    TIME_LIMIT = "time_limit"
    #: The server was draining; what was generated so far is delivered.
    SHUTDOWN = "shutdown"
    #: The output completed the request's constraint (json_schema, regex, choice,
    #: json_object).
    CONSTRAINT = "constraint"
    #: A reason this client version does not know (a newer server).
    UNKNOWN = "unknown"

    @classmethod
    def from_pb(cls, value: int) -> FinishReason | None:
        """None for UNSPECIFIED (every chunk but the last)."""
        if value == generation_pb2.FINISH_REASON_UNSPECIFIED:
            return None
        try:
            name = generation_pb2.FinishReason.Name(value)
        except ValueError:
            return cls.UNKNOWN
        return cls(name.removeprefix("FINISH_REASON_").lower())


@dataclass(frozen=True)
class TopToken(_Result):
    """A candidate token at one position, with its natural-log probability."""

    id: int
    text: str
    logprob: float


@dataclass(frozen=True)
class TokenDetail(_Result):
    """One generated token (only with ``return_token_details`` or ``top_n_tokens``)."""

    id: int
    text: str
    logprob: float
    top_tokens: tuple[TopToken, ...] = ()

    @classmethod
    def from_pb(cls, message: generation_pb2.TokenDetail) -> TokenDetail:
        return _copy(
            cls, message, top_tokens=tuple(TopToken.from_pb(t) for t in message.top_tokens)
        )


@dataclass(frozen=True)
class Usage(_Result):
    """Token counts of one generation."""

    input_tokens: int
    generated_tokens: int
    input_truncated: bool
    #: Of ``input_tokens``, those the server's prefix cache held (not recomputed).
    cached_input_tokens: int = 0
    #: Speculative decoding: tokens drafted from the request's own text and verified,
    #: and of those the ones the model agreed with (each one a decoding step saved).
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    #: The LoRA adapter that served the request ("" = the base model).
    adapter: str = ""


@dataclass(frozen=True)
class Timings(_Result):
    """Where the time went, in milliseconds (as measured by the server)."""

    queue_ms: float
    time_to_first_token_ms: float
    generation_ms: float
    tokens_per_second: float
    total_ms: float


@dataclass(frozen=True)
class GenerateChunk(_Result):
    """One piece of a stream. Only the last one has ``finish_reason``, usage and timings."""

    text: str
    tokens: tuple[TokenDetail, ...]
    request_id: str
    finish_reason: FinishReason | None = None
    stop_sequence: str = ""
    usage: Usage | None = None
    timings: Timings | None = None
    seed: int | None = None
    #: Last chunk: the request had a constraint that the output did not complete.
    incomplete: bool = False
    raw: generation_pb2.GenerateResponse | None = field(default=None, compare=False, repr=False)

    @property
    def is_last(self) -> bool:
        return self.finish_reason is not None

    @classmethod
    def from_pb(cls, message: generation_pb2.GenerateResponse) -> GenerateChunk:
        reason = FinishReason.from_pb(message.finish_reason)
        last = reason is not None
        return cls(
            text=message.text,
            tokens=tuple(TokenDetail.from_pb(t) for t in message.tokens),
            request_id=message.request_id,
            finish_reason=reason,
            stop_sequence=message.stop_sequence,
            usage=Usage.from_pb(message.usage) if last else None,
            timings=Timings.from_pb(message.timings) if last else None,
            seed=message.seed if last else None,
            incomplete=message.incomplete,
            raw=message,
        )


@dataclass(frozen=True)
class GenerateResult(_Result):
    """A whole generation: from ``generate()``, or ``stream.result`` once a stream ended."""

    text: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    seed: int
    request_id: str
    stop_sequence: str = ""
    tokens: tuple[TokenDetail, ...] = ()
    #: The request had a constraint (json_schema, regex, choice, json_object) and
    #: generation ended before the output completed it: ``text`` is not valid yet.
    incomplete: bool = False
    raw: generation_pb2.GenerateResponse | None = field(default=None, compare=False, repr=False)

    def json(self) -> Any:
        """The text parsed as JSON (json_schema / json_object output); ValueError when
        it is not JSON, for example because the output is ``incomplete``."""
        return json.loads(self.text)

    @classmethod
    def from_pb(cls, message: generation_pb2.GenerateResponse) -> GenerateResult:
        return cls(
            text=message.text,
            finish_reason=FinishReason.from_pb(message.finish_reason) or FinishReason.UNKNOWN,
            usage=Usage.from_pb(message.usage),
            timings=Timings.from_pb(message.timings),
            seed=message.seed,
            request_id=message.request_id,
            stop_sequence=message.stop_sequence,
            tokens=tuple(TokenDetail.from_pb(t) for t in message.tokens),
            incomplete=message.incomplete,
            raw=message,
        )


# ------------------------------------------------------------------- tokenize, info


@dataclass(frozen=True)
class TokenizeResult(_Result):
    """Token ids, token strings and [start, end) character offsets into the input."""

    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    offsets: tuple[tuple[int, int], ...]
    truncated: bool
    raw: generation_pb2.TokenizeResponse | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_pb(cls, message: generation_pb2.TokenizeResponse) -> TokenizeResult:
        return cls(
            ids=tuple(message.ids),
            tokens=tuple(message.tokens),
            offsets=tuple((o.start, o.end) for o in message.offsets),
            truncated=message.truncated,
            raw=message,
        )


@dataclass(frozen=True)
class Quantization(_Result):
    """bitsandbytes quantization of the served model (mode "none", "8bit" or "4bit")."""

    mode: str
    quant_type: str
    compute_dtype: str
    double_quant: bool
    int8_threshold: float

    @classmethod
    def from_pb(cls, message: generation_pb2.Quantization) -> Quantization:
        return _copy(cls, message, mode=message.mode or "none")


@dataclass(frozen=True)
class KvCache(_Result):
    """How the server holds the KV cache: ``mode`` "arena" (batched, ``slots`` requests
    at once, each up to ``tokens_per_slot`` tokens) or "serial" (one at a time)."""

    mode: str
    slots: int
    tokens_per_slot: int
    bytes: int
    serial_reason: str
    prefix_cache: bool = False
    prefix_block_tokens: int = 0

    @classmethod
    def from_pb(cls, message: generation_pb2.KvCache) -> KvCache:
        return _copy(cls, message)


@dataclass(frozen=True)
class AdapterInfo(_Result):
    """A LoRA adapter loaded on the server (``adapter=name`` selects it per request)."""

    name: str
    path: str
    rank: int
    scaling: float
    target_modules: tuple[str, ...]
    bytes: int
    base_model: str = ""

    @classmethod
    def from_pb(cls, message: generation_pb2.AdapterInfo) -> AdapterInfo:
        return _copy(cls, message, target_modules=tuple(message.target_modules))


@dataclass(frozen=True)
class ModelInfo(_Result):
    """The served model and the limits a request must respect."""

    model_id: str
    architecture: str
    parameter_count: int
    dtype: str
    device: str
    quantization: Quantization
    memory_footprint_bytes: int
    max_context_length: int
    has_chat_template: bool
    eos_token: str
    eos_token_id: int
    vocab_size: int
    default_max_new_tokens: int
    max_new_tokens_limit: int
    max_stop_sequences: int
    max_top_n_tokens: int
    load_seconds: float
    #: Structured output (json_schema, regex, choice, json_object) is available.
    constrained_decoding: bool = False
    constraint_engine: str = ""
    max_constraint_bytes: int = 0
    #: The name KServe v2 / Triton and TGIS clients address the model by.
    served_model_name: str = ""
    kv_cache: KvCache | None = None
    #: LoRA adapters loaded now, and the server's limits for them.
    adapters: tuple[AdapterInfo, ...] = ()
    max_loras: int = 0
    max_lora_rank: int = 0
    raw: generation_pb2.ModelInfo | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_pb(cls, message: generation_pb2.ModelInfo) -> ModelInfo:
        quantization = Quantization.from_pb(message.quantization)
        kv_cache = KvCache.from_pb(message.kv_cache) if message.HasField("kv_cache") else None
        adapters = tuple(AdapterInfo.from_pb(a) for a in message.adapters)
        return _copy(
            cls,
            message,
            quantization=quantization,
            kv_cache=kv_cache,
            adapters=adapters,
            raw=message,
        )


# ------------------------------------------------------------------------ documents


class OutputFormat(str, enum.Enum):
    """Output formats of ``parse_document`` (zopilot.v1.OutputFormat)."""

    MARKDOWN = "markdown"
    HTML = "html"
    TEXT = "text"
    JSON = "json"
    CSV = "csv"

    @classmethod
    def coerce(cls, value: OutputFormat | str) -> OutputFormat:
        try:
            return cls(value.lower() if isinstance(value, str) else value)
        except ValueError:
            choices = ", ".join(f.value for f in cls)
            raise ValueError(f"unknown output format {value!r}; choose from {choices}") from None

    def to_pb(self) -> documents_pb2.OutputFormat:
        value: documents_pb2.OutputFormat = getattr(documents_pb2, f"OUTPUT_FORMAT_{self.name}")
        return value


@dataclass(frozen=True)
class DocumentMetadata(_Result):
    """Facts about the parsed document and how it was parsed."""

    detected_type: str
    page_count: int
    sheet_count: int
    slide_count: int
    method: str
    size_bytes: int
    processing_ms: float
    parser_version: str
    #: How json_fields / json_schema were filled: "model", "labels" or "".
    field_extraction: str = ""
    #: The tokenizer that counted the chunks' tokens ("" without chunking).
    chunk_tokenizer: str = ""


@dataclass(frozen=True)
class DocumentChunk(_Result):
    """One chunk of the markdown (``chunk_tokens``) and where it came from.

    ``text`` is ``prefix_chars`` characters of repeated context (the overlap, or a
    table's header row) and then ``markdown[char_start:char_end]``; joined without
    their prefixes, the chunks are the markdown exactly.
    """

    text: str
    token_count: int
    heading_path: tuple[str, ...]
    #: First and last page (PDF), slide (PPTX) or sheet (XLSX), 1-based; 0 without pages.
    page_start: int
    page_end: int
    char_start: int
    char_end: int
    prefix_chars: int

    @property
    def body(self) -> str:
        """The chunk's own span of the markdown, without the repeated prefix."""
        return self.text[self.prefix_chars :]

    @classmethod
    def from_pb(cls, message: documents_pb2.DocumentChunk) -> DocumentChunk:
        return _copy(cls, message, heading_path=tuple(message.heading_path))


@dataclass(frozen=True)
class ParsedDocument(_Result):
    """The requested outputs (None where a format was not requested) and metadata."""

    markdown: str | None
    html: str | None
    text: str | None
    json: str | None
    csv: str | None
    metadata: DocumentMetadata
    warnings: tuple[str, ...]
    request_id: str
    #: The markdown's chunks when ``chunk_tokens`` was given, else empty.
    chunks: tuple[DocumentChunk, ...] = ()
    raw: documents_pb2.DocumentParseResponse | None = field(default=None, compare=False, repr=False)

    def get(self, output: OutputFormat | str) -> str | None:
        """The output in ``output`` format (None when it was not requested)."""
        return getattr(self, OutputFormat.coerce(output).value)

    @classmethod
    def from_pb(cls, message: documents_pb2.DocumentParseResponse) -> ParsedDocument:
        outputs = {
            f.value: getattr(message, f.value) if message.HasField(f.value) else None
            for f in OutputFormat
        }
        return cls(
            **outputs,
            metadata=DocumentMetadata.from_pb(message.metadata),
            warnings=tuple(message.warnings),
            request_id=message.request_id,
            chunks=tuple(DocumentChunk.from_pb(c) for c in message.chunks),
            raw=message,
        )


# --------------------------------------------------------------------------- health


class HealthStatus(str, enum.Enum):
    """grpc.health.v1 serving status of the server (or of one of its services)."""

    UNKNOWN = "UNKNOWN"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    SERVICE_UNKNOWN = "SERVICE_UNKNOWN"

    @classmethod
    def from_number(cls, value: int) -> HealthStatus:
        order = list(cls)
        return order[value] if 0 <= value < len(order) else cls.UNKNOWN
