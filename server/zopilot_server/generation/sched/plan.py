"""What the scheduler hands the runner each step, and what comes back (torch-free).

The pipeline of one step: the scheduler (scheduler.py) owns every row's progress and
writes a Plan: these rows decode one token (and may verify draft tokens), these prompt
chunks are prefilled. The runner (runner.py) computes all of it in one packed forward
over the KV arena (packed.py, kv_arena.py), chooses tokens (sampling.py) and returns one
Step per token produced (several for a row whose draft was accepted); the scheduler then
decides, in one place, whether each row goes on (``finish_reason``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..domain import GenerationRequest, TokenDetail


@dataclass(frozen=True)
class RowSpec:
    """What the runner needs to start a row."""

    key: int
    request: GenerationRequest


@dataclass(frozen=True)
class PrefillChunk:
    """Prompt tokens ``start:end`` of row ``key`` are computed this step; when ``end``
    is the prompt's length the row's first token comes back."""

    key: int
    start: int
    end: int


@dataclass(frozen=True)
class Plan:
    """One step's work, computed in one forward: ``decode`` rows each feed the token
    chosen last; ``chunks`` are prompt tokens of rows still prefilling (several rows'
    chunks may share a step)."""

    decode: tuple[int, ...] = ()
    chunks: tuple[PrefillChunk, ...] = ()
    # Speculative decoding: (row, most draft tokens) for decoding rows that may propose
    # tokens from their own text (ngram.py) to be verified in this step's forward.
    drafts: tuple[tuple[int, int], ...] = ()

    @property
    def prompt_tokens(self) -> int:
        return sum(c.end - c.start for c in self.chunks)

    @property
    def keys(self) -> list[int]:
        return [*self.decode, *(c.key for c in self.chunks)]


@dataclass(frozen=True)
class Step:
    """One generated token of one row. ``final``: the row's constraint is complete with
    this token and allows nothing more, so the row ends (FinishReason.CONSTRAINT).
    ``failure``: this row cannot go on (its constraint broke); it ends with that error
    and the token is not output, while the other rows of the step go on."""

    key: int
    token_id: int
    detail: TokenDetail | None = None
    final: bool = False
    failure: Exception | None = None
    # Speculative decoding, on a row's first Step of a step: tokens it drafted and, of
    # those, how many the model agreed with (the Steps after this one in the same step).
    drafted: int = 0
    accepted: int = 0


@dataclass(frozen=True)
class ArenaInfo:
    """How the runner holds KV: what admission counts and GetModelInfo / metrics show."""

    mode: str  # "arena" (batched) or "serial" (one request at a time, any architecture)
    slots: int
    tokens_per_slot: int
    bytes: int
    reason: str = ""  # why serial, when it is
    prefix_cache: bool = False  # prompt prefixes already in a slot are not recomputed
    prefix_block_tokens: int = 0
