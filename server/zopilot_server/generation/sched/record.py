"""One request's record in the scheduler, from ``submit`` to its last token (torch-free).

The caller holds it to cancel (``Engine.submit`` returns it); the scheduler keeps each
request's progress on it: its row key in the runner once it runs, the prompt tokens
whose KV its slot holds (cached or prefilled), the tokens generated, the prefix it waits
for. One object per request, so progress is counted once and "is it still prefilling"
is decided in one place. What it shares with other threads is its RunControl (cancel,
deadline, finish reason); the torch side of the same row (penalty mask, generator,
grammar matcher) lives in the runner, keyed by ``key``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..domain import FinishReason, GenerationRequest, Sink, TokenDetail
from .run_control import RunControl
from .speculation import DraftStats


class Streamer(Protocol):
    """What the scheduler needs of a TokenStreamer."""

    def put_token(self, token_id: int, detail: TokenDetail | None = None) -> None: ...
    def end(self) -> None: ...
    def complete(self, reason: FinishReason) -> None: ...


@dataclass(eq=False)
class RequestRecord:
    """A submitted request and, once it runs, its progress."""

    request: GenerationRequest
    sink: Sink
    control: RunControl
    withdraw: Callable[[RequestRecord], None] | None = None
    key: int = -1  # its row in the runner, once it runs
    streamer: Streamer | None = None
    computed: int = 0  # prompt tokens whose KV its slot holds
    produced: int = 0  # tokens generated
    # Prefix reuse in flight: the prompt starts with ``share`` tokens that row ``leader``
    # is prefilling; it waits for them instead of computing them twice.
    leader: int | None = None
    share: int = 0
    drafts: DraftStats = field(default_factory=DraftStats)  # speculative decoding

    @property
    def cost(self) -> int:
        """KV cache tokens this request may hold at its longest."""
        return len(self.request.input_ids) + self.request.max_new_tokens

    @property
    def prompt_left(self) -> int:
        return len(self.request.input_ids) - self.computed

    @property
    def prefilling(self) -> bool:
        """Its first token is not out yet (the step that completes the prompt makes it)."""
        return self.produced == 0

    def start(self, key: int, streamer: Streamer) -> RequestRecord:
        """It takes row ``key`` in the running batch, its tokens going to ``streamer``."""
        self.key, self.streamer = key, streamer
        return self

    def cancel(self) -> None:
        """Stop it: a running request within one step, a queued one at once."""
        self.control.cancel()
        if self.withdraw is not None:
            self.withdraw(self)


# The name callers have used for what submit returns.
Job = RequestRecord
