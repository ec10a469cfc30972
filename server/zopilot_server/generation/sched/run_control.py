"""What can end a generation from outside the token stream: cancellation and time.

The scheduler consults it after every decoding step, so a cancelled or timed-out
request leaves the batch within one step. For time limits we also predict:
if the next step (estimated from the last one) would overrun the deadline, we stop now,
so the text reaches the client before its deadline does.
"""

from __future__ import annotations

import threading
import time

from ..domain import FinishReason


class RunControl:
    """Shared between the gRPC handler (cancel) and the scheduler thread (everything else)."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self._cancelled = threading.Event()
        self._finish: FinishReason | None = None
        self._last_step_at: float | None = None
        self._step_estimate = 0.0
        # Prompt tokens whose KV the prefix cache held (set when the row starts).
        self.cached_tokens = 0
        # Speculative decoding: tokens drafted from its text, and those accepted.
        self.draft_tokens = 0
        self.accepted_draft_tokens = 0

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def finish_reason(self) -> FinishReason | None:
        return self._finish

    def finish(self, reason: FinishReason) -> None:
        """Record why generation ends; the first reason wins."""
        if self._finish is None:
            self._finish = reason

    def out_of_time(self, now: float | None = None) -> bool:
        if self.deadline is None:
            return False
        now = time.monotonic() if now is None else now
        return now + self._step_estimate >= self.deadline

    def tick(self, now: float) -> None:
        """Called by the scheduler thread after each token of this request: the time
        between two tokens is the estimate ``out_of_time`` looks ahead by."""
        if self._last_step_at is not None:
            self._step_estimate = now - self._last_step_at
        self._last_step_at = now
