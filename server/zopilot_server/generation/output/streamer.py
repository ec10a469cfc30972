"""The streamer that turns a request's generated tokens into Chunks.

It builds on transformers' ``TextIteratorStreamer`` (its queue and iterator protocol,
and ``put`` / ``end`` for ``generate()``) but replaces its text segmentation:
TextIteratorStreamer holds text back until a space or newline, which delays every word;
we emit a delta as soon as a token completes a character, hold back only what may start
a stop sequence, and attach token details. The batch scheduler feeds it one token per
step (``put_token``) in its own thread, so a matched stop sequence ends that row at
exactly that token (RunControl, checked by the scheduler right after the token).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from transformers import TextIteratorStreamer

from ..domain import (
    Chunk,
    Completion,
    FinishReason,
    GenerationRequest,
    Sink,
    Timings,
    TokenDetail,
    Usage,
)
from ..sched.run_control import RunControl
from .detokenizer import IncrementalDetokenizer
from .stop_sequences import StopSequenceMatcher

log = logging.getLogger(__name__)


class TokenStreamer(TextIteratorStreamer):
    """Receives token ids (scheduler: ``put_token``; generate(): ``put``); emits Chunks to
    ``sink`` (default: its queue)."""

    def __init__(
        self,
        tokenizer: Any,
        request: GenerationRequest,
        control: RunControl,
        *,
        eos_token_ids: frozenset[int],
        sink: Sink | None = None,
    ) -> None:
        super().__init__(tokenizer, skip_prompt=True)
        self.request = request
        self.control = control
        self._eos = frozenset() if request.ignore_eos else eos_token_ids
        self._uses_queue = sink is None
        self._sink: Sink = self.text_queue.put if sink is None else sink
        self._detok = IncrementalDetokenizer(tokenizer)
        self._stops = StopSequenceMatcher(
            request.stop_sequences, include_stop_sequence=request.include_stop_sequence
        )
        self._pending_details: list[TokenDetail] = []
        self.generated_tokens = 0
        self.started_at = time.monotonic()
        self.first_token_at: float | None = None
        self._matched_stop = ""
        self._matched_token: int | None = None
        self._completed = False
        # Tokens arrive in the scheduler thread; the drain deadline may complete the
        # stream from a timer thread while a step runs (scheduler.Scheduler.drain).
        self._lock = threading.Lock()

    # -- called in the scheduler thread ---------------------------------------------
    def put(self, value: Any) -> None:
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        for token_id in value.reshape(-1).tolist():
            self._on_token(int(token_id))

    def put_token(self, token_id: int, detail: TokenDetail | None = None) -> None:
        """One generated token from the batch scheduler, with its details when asked."""
        self._on_token(token_id, detail)

    def end(self) -> None:
        """Generation ended normally: finish with whatever reason ended it."""
        self.complete(self.control.finish_reason or FinishReason.LENGTH)

    # -- internals -------------------------------------------------------------------
    def _on_token(self, token_id: int, detail: TokenDetail | None = None) -> None:
        with self._lock:
            self._take_token(token_id, detail)

    def _take_token(self, token_id: int, detail: TokenDetail | None) -> None:
        if self.control.finish_reason is not None:
            return  # tokens after the end (e.g. past a stop sequence) are not output
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        if token_id in self._eos:
            # Under a constraint the runner allows EOS only where the output is complete.
            constrained = self.request.constraint is not None
            self.control.finish(FinishReason.CONSTRAINT if constrained else FinishReason.EOS_TOKEN)
            return
        if token_id in self.request.stop_token_ids:
            self._matched_token = token_id
            self.control.finish(FinishReason.EOS_TOKEN)
            return
        self.generated_tokens += 1
        if detail is not None:
            self._pending_details.append(detail)
        result = self._stops.feed(self._detok.push(token_id))
        if result.matched is not None:
            self._matched_stop = result.matched
            self.control.finish(FinishReason.STOP_SEQUENCE)
        if result.text or self._pending_details:
            self._emit_text(result.text)

    def _emit_text(self, text: str) -> None:
        details = tuple(self._pending_details)
        self._pending_details.clear()
        self._sink(Chunk(text=text, tokens=details))

    def complete(self, reason: FinishReason) -> None:
        """Emit the last chunk (held-back text, usage, timings). Idempotent, thread-safe."""
        with self._lock:
            self._complete(reason)

    def _complete(self, reason: FinishReason) -> None:
        if self._completed:
            return
        self._completed = True
        self.control.finish(reason)
        reason = self.control.finish_reason or reason
        tail = ""
        if reason is not FinishReason.STOP_SEQUENCE:
            tail, reason = self._release_held_back(reason)
        completion = self._completion(reason)
        # Logged before the final chunk leaves: once a client holds the result, the log says so.
        _log_completion(self.request.request_id, completion)
        self._sink(Chunk(text=tail, tokens=tuple(self._pending_details), completion=completion))
        self._pending_details.clear()
        if self._uses_queue:
            self.text_queue.put(self.stop_signal)  # ends iteration for queue consumers

    def _release_held_back(self, reason: FinishReason) -> tuple[str, FinishReason]:
        """Text still held back at the end; the flushed bytes may complete a stop sequence."""
        result = self._stops.feed(self._detok.flush())
        if result.matched is not None:
            self._matched_stop = result.matched
            return result.text, FinishReason.STOP_SEQUENCE
        return result.text + self._stops.flush(), reason

    def _completion(self, reason: FinishReason) -> Completion:
        now = time.monotonic()
        arrival = self.request.arrival or self.started_at
        generation_s = now - self.started_at
        first = self.first_token_at if self.first_token_at is not None else now
        return Completion(
            finish_reason=reason,
            stop_sequence=self._matched_stop,
            stop_token_id=self._matched_token,
            seed=self.request.sampling.seed,
            incomplete=self.request.constraint is not None
            and reason is not FinishReason.CONSTRAINT,
            usage=Usage(
                input_tokens=len(self.request.input_ids),
                generated_tokens=self.generated_tokens,
                input_truncated=self.request.input_truncated,
                cached_input_tokens=self.control.cached_tokens,
                draft_tokens=self.control.draft_tokens,
                accepted_draft_tokens=self.control.accepted_draft_tokens,
                adapter=self.request.adapter.name if self.request.adapter is not None else "",
            ),
            timings=Timings(
                queue_ms=(self.started_at - arrival) * 1000,
                time_to_first_token_ms=(first - arrival) * 1000,
                generation_ms=generation_s * 1000,
                tokens_per_second=self.generated_tokens / generation_s if generation_s else 0.0,
                total_ms=(now - arrival) * 1000,
            ),
        )


def _log_completion(request_id: str, done: Completion) -> None:
    """One INFO line per finished request, whatever ended it."""
    log.info(
        "request %s: %s, %d prompt + %d generated tokens, queue %.0f ms, ttft %.0f ms, "
        "%.1f tokens/s",
        request_id,
        done.finish_reason.name,
        done.usage.input_tokens,
        done.usage.generated_tokens,
        done.timings.queue_ms,
        done.timings.time_to_first_token_ms,
        done.timings.tokens_per_second,
    )
