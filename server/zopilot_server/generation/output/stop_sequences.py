"""Stop-sequence matching on streamed text, across token boundaries, with hold-back.

Text that could still turn out to be the start of a stop sequence is held back rather
than sent, so a client never receives text that is later retracted. Held-back text is
released as soon as it can no longer be part of a match, or when generation ends.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StopResult:
    """What may be sent now, and the stop sequence that matched (if one did)."""

    text: str
    matched: str | None = None


class StopSequenceMatcher:
    """Feeds text deltas through; finds the earliest complete stop sequence."""

    def __init__(self, stop_sequences: tuple[str, ...], *, include_stop_sequence: bool) -> None:
        self._stops = tuple(s for s in stop_sequences if s)
        self._include = include_stop_sequence
        self._pending = ""

    def feed(self, delta: str) -> StopResult:
        """Add a delta; return the text that is safe to send and any match."""
        if not self._stops:
            return StopResult(delta)
        self._pending += delta
        match = self._earliest_match()
        if match is not None:
            index, stop = match
            end = index + len(stop) if self._include else index
            text, self._pending = self._pending[:end], ""
            return StopResult(text, stop)
        keep = self._longest_partial_suffix()
        cut = len(self._pending) - keep
        text, self._pending = self._pending[:cut], self._pending[cut:]
        return StopResult(text)

    def flush(self) -> str:
        """Release held-back text at the end of generation (no match can complete)."""
        text, self._pending = self._pending, ""
        return text

    def _earliest_match(self) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop in self._stops:
            index = self._pending.find(stop)
            if index >= 0 and (best is None or index < best[0]):
                best = (index, stop)
        return best

    def _longest_partial_suffix(self) -> int:
        """Length of the longest suffix of pending text that starts some stop sequence."""
        longest = 0
        for stop in self._stops:
            upto = min(len(stop) - 1, len(self._pending))
            for size in range(upto, longest, -1):
                if self._pending.endswith(stop[:size]):
                    longest = size
                    break
        return longest
