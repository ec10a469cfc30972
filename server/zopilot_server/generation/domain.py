"""Domain objects of the generation path, free of protobuf and torch.

The servicer converts protobuf to these (validation.py) and back (servicer.py); other
in-process callers build them with requests.py. The engine and its batching scheduler
only ever see these, so they can be tested without gRPC. This module imports nothing of
ours but oom.py: every other generation module may import it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .model.oom import is_out_of_memory

# Where a request's Chunks (or the exception that ends it) go, from the scheduler thread.
Sink = Callable[[object], None]


class FinishReason(enum.Enum):
    """Why a generation ended. Values match zopilot.v1.FinishReason."""

    LENGTH = 1
    EOS_TOKEN = 2
    STOP_SEQUENCE = 3
    CANCELLED = 4
    TIME_LIMIT = 5
    SHUTDOWN = 6
    CONSTRAINT = 7


class ConstraintKind(enum.Enum):
    """Kinds of structured-output constraint: the GenerateRequest ``constraint`` oneof."""

    JSON_SCHEMA = "json_schema"
    REGEX = "regex"
    CHOICE = "choice"
    JSON_OBJECT = "json_object"


class ConstraintCursor(Protocol):
    """One request's position in its grammar (constraints.ConstraintState)."""

    kind: ConstraintKind

    def allowed(self) -> bytes: ...
    def advance(self, token_id: int) -> None: ...
    @property
    def accepting(self) -> bool: ...
    @property
    def finished(self) -> bool: ...
    @property
    def error(self) -> str: ...


class CompiledConstraint(Protocol):
    """A compiled constraint (constraints.Constraint): what a request carries. Declared
    here so that this module need not import the grammar engine's module."""

    @property
    def kind(self) -> ConstraintKind: ...
    def start(self) -> ConstraintCursor: ...


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. temperature 0 means greedy decoding."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class LoraAdapter(Protocol):
    """A loaded LoRA adapter (loading/adapters.Adapter), as a request carries it: the
    request holds it from validation to its end, so unloading it never pulls the
    weights from under a request already admitted."""

    @property
    def name(self) -> str: ...
    @property
    def cache_key(self) -> str: ...

    running: int  # rows in the batch using it (counted by the runner)


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request: prompt already tokenized and truncated, limits resolved."""

    request_id: str
    input_ids: tuple[int, ...]
    input_truncated: bool
    max_new_tokens: int
    min_new_tokens: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_sequences: tuple[str, ...] = ()
    include_stop_sequence: bool = False
    ignore_eos: bool = False
    # Token ids that end the generation like EOS does (not output); ignore_eos leaves
    # them in force (vLLM's stop_token_ids).
    stop_token_ids: frozenset[int] = frozenset()
    token_details: bool = False
    top_n_tokens: int = 0
    # Absolute time.monotonic() by which generation must have ended (time_limit_ms or
    # the gRPC deadline less the margin, whichever is earlier); None = no limit.
    deadline: float | None = None
    # time.monotonic() when the request arrived, for queue and TTFT timings.
    arrival: float = 0.0
    # Structured output: the compiled grammar the output must follow; None = free text.
    constraint: CompiledConstraint | None = None
    # Neither reuse another request's cached prompt KV nor leave ours for others.
    private: bool = False
    # May draft tokens from its own text for verification (--speculative-tokens > 0).
    speculative: bool = True
    # The LoRA adapter applied to this row's tokens; None = the base model.
    adapter: LoraAdapter | None = None

    @property
    def prefix_namespace(self) -> str:
        """What the prefix cache keys this request's KV under besides its tokens: the
        same tokens through another adapter have other KV, so they never share."""
        return self.adapter.cache_key if self.adapter is not None else ""


@dataclass(frozen=True)
class TopToken:
    id: int
    text: str
    logprob: float


@dataclass(frozen=True)
class TokenDetail:
    id: int
    text: str
    logprob: float
    top_tokens: tuple[TopToken, ...] = ()


@dataclass(frozen=True)
class Usage:
    input_tokens: int
    generated_tokens: int
    input_truncated: bool
    cached_input_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    draft_tokens: int = 0  # speculative decoding: tokens proposed from the request's text
    accepted_draft_tokens: int = 0  # of those, the ones the model agreed with
    adapter: str = ""  # the LoRA adapter that served it ("" = the base model)


@dataclass(frozen=True)
class Timings:
    queue_ms: float
    time_to_first_token_ms: float
    generation_ms: float
    tokens_per_second: float
    total_ms: float


@dataclass(frozen=True)
class Completion:
    """What the last chunk of a generation adds: why and how it ended."""

    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    seed: int
    stop_sequence: str = ""
    # The stop token id that ended it (one of the request's stop_token_ids), or None.
    stop_token_id: int | None = None
    # The request had a constraint and ended before its output completed it.
    incomplete: bool = False


@dataclass(frozen=True)
class Chunk:
    """One piece of a generation's output; the last one has ``completion`` set."""

    text: str
    tokens: tuple[TokenDetail, ...] = ()
    completion: Completion | None = None


@dataclass(frozen=True)
class EngineLoad:
    """What the engine holds right now (metrics, autoscaling, retry hints)."""

    waiting: int
    running: int
    kv_tokens_used: int  # tokens held in the KV arena's slots right now
    kv_tokens_budget: int  # slots x tokens per slot
    kv_slots_used: int = 0
    kv_slots: int = 0
    kv_bytes: int = 0
    prefix_query_tokens: int = 0  # prompt tokens looked up in the prefix cache, in total
    prefix_hit_tokens: int = 0  # of those, served from it
    draft_tokens: int = 0  # speculative decoding: tokens drafted and verified, in total
    accepted_draft_tokens: int = 0  # of those, the ones the model agreed with
    # LoRA adapters of the running and the waiting requests, and how many may be resident
    # (the lora_requests_info gauge gateways route by)
    running_adapters: tuple[str, ...] = ()
    waiting_adapters: tuple[str, ...] = ()
    max_loras: int = 0
    kv_tokens_per_slot: int = 0
    prefix_block_tokens: int = 0  # the prefix cache's block; 0 while it is off


class QueueFull(Exception):
    """No room in the batch and no room to wait; retry after ``retry_after_s``."""

    def __init__(self, queued: int, retry_after_s: float) -> None:
        super().__init__(f"generation queue is full ({queued} waiting); retry later")
        self.retry_after_s = retry_after_s


class RequestTooLong(ValueError):
    """prompt + max_new_tokens exceed what one KV arena slot holds."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(
            f"prompt + max_new_tokens is {tokens} tokens; a KV cache slot holds {limit} "
            "(--kv-slot-tokens / the KV cache memory flags): shorten the prompt or lower "
            "max_new_tokens"
        )
        self.tokens = tokens
        self.limit = limit


class ModelLoading(Exception):
    """The model is not loaded yet: nothing can generate; retry shortly."""

    def __init__(self) -> None:
        super().__init__("the model is still loading; retry shortly (health: NOT_SERVING)")


class EngineClosed(Exception):
    """The engine is draining or stopped and accepts no new work; retry elsewhere."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class GenerationFailed(Exception):
    """A model step raised; ``cause`` is the original exception.

    Constructing one from an out-of-memory cause gives an OutOfMemory, so whoever catches
    a model step's error classifies it once, here, and the error table maps classes only.
    """

    def __new__(cls, request_id: str, cause: BaseException) -> GenerationFailed:
        if cls is GenerationFailed and is_out_of_memory(cause):
            cls = OutOfMemory
        return super().__new__(cls, request_id, cause)

    def __init__(self, request_id: str, cause: BaseException) -> None:
        super().__init__(f"generation failed for request {request_id}: {cause!r}")
        self.request_id = request_id
        self.cause = cause


class OutOfMemory(GenerationFailed):
    """A model step ran out of (GPU) memory: retrying with a shorter request may fit."""


class InvalidConstraint(ValueError):
    """A structured-output constraint the grammar engine cannot follow: it does not
    compile (bad schema or regex, unsupported keyword), or it exceeded the engine's
    size and work limits while generating. ``field`` names the request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class PromptTooLong(ValueError):
    """The prompt and the answer's room exceed the model's context."""

    def __init__(self, tokens: int, max_new_tokens: int, context: int) -> None:
        super().__init__(
            f"prompt has {tokens} tokens; with max_new_tokens {max_new_tokens} that exceeds "
            f"the model context of {context} tokens"
        )
        self.tokens = tokens


class ConstraintUnavailable(Exception):
    """This server cannot enforce constraints (no grammar engine, or a slow tokenizer)."""


class AdapterNotFound(LookupError):
    """No adapter of that name is loaded (NOT_FOUND)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"adapter {name!r} is not loaded (ListAdapters shows those that are)")


class AdapterRejected(ValueError):
    """An adapter that cannot be loaded. ``fits`` False: it does not fit this base model
    or server (FAILED_PRECONDITION); True: the request or the files are bad
    (INVALID_ARGUMENT on ``field``)."""

    def __init__(self, message: str, *, field: str = "path", fits: bool = True) -> None:
        super().__init__(message)
        self.field, self.message, self.fits = field, message, fits


class AdapterExists(ValueError):
    """LoadAdapter with a name already loaded (ALREADY_EXISTS)."""


class AdapterLimit(Exception):
    """--max-loras adapters are resident already (RESOURCE_EXHAUSTED)."""


class AdapterAdminDisabled(Exception):
    """LoadAdapter / UnloadAdapter without --adapter-admin (PERMISSION_DENIED)."""
