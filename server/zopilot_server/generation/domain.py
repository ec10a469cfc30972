"""Domain objects of the generation path, free of protobuf and torch.

The servicer converts protobuf to these (validation.py) and back (servicer.py); the
engine only ever sees these, so it can be tested and later batched without gRPC.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FinishReason(enum.Enum):
    """Why a generation ended. Values match zopilot.v1.FinishReason."""

    LENGTH = 1
    EOS_TOKEN = 2
    STOP_SEQUENCE = 3
    CANCELLED = 4
    TIME_LIMIT = 5


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
    token_details: bool = False
    top_n_tokens: int = 0
    # Absolute time.monotonic() by which generation must have ended (time_limit_ms or
    # the gRPC deadline less the margin, whichever is earlier); None = no limit.
    deadline: float | None = None
    # time.monotonic() when the request arrived, for queue and TTFT timings.
    arrival: float = 0.0


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


@dataclass(frozen=True)
class Chunk:
    """One piece of a generation's output; the last one has ``completion`` set."""

    text: str
    tokens: tuple[TokenDetail, ...] = ()
    completion: Completion | None = None


@dataclass(frozen=True)
class EngineLoad:
    """How busy the engine is right now: what metrics and autoscalers read."""

    waiting: int
    running: int
    kv_tokens_used: int = 0
    kv_tokens_budget: int = 0  # 0 = the engine has no KV token budget
