"""Draft tokens from the row's own text: n-gram (prompt lookup) proposals.

Much of what a server is asked to write repeats text it was given (a quoted passage,
fields extracted from a document, JSON keys, code being edited). When the last ``n``
tokens of a row (prompt + output) occurred earlier in the same row, the tokens that
followed them there are a cheap guess at what follows now; the packed step verifies the
guess in the same forward that decodes the row (runner.py, sampling.TokenChooser.verify),
so a right guess yields several tokens for one step and a wrong one costs only its
query tokens. No model call, no second model: an index of the row's n-grams, updated as
tokens arrive, answers in microseconds.

The longest suffix wins (``max_n`` down to ``min_n`` tokens: a longer match predicts
better), and its most recent earlier occurrence (the text being copied right now, not
one the row already moved past). Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable


class NgramProposer:
    """The n-gram index of one row's tokens and the proposal for what comes next."""

    def __init__(self, tokens: Iterable[int], *, min_n: int, max_n: int, vocab: int) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(
                f"n-gram sizes must satisfy 1 <= min_n <= max_n (got {min_n}, {max_n})"
            )
        self.min_n, self.max_n, self._vocab = min_n, max_n, vocab
        self._tokens: list[int] = []
        # n -> n-gram -> where the token after its latest occurrence is (only n-grams
        # that have a following token are indexed, so the row's suffix never finds itself)
        self._index: dict[int, dict[tuple[int, ...], int]] = {
            n: {} for n in range(min_n, max_n + 1)
        }
        self.extend(tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        """The row's text grew by ``tokens`` (prompt at start, then each chosen token)."""
        for token in tokens:
            self._tokens.append(token)
            end = len(self._tokens) - 1  # the new token follows the n-grams ending before it
            for n, grams in self._index.items():
                if end >= n:
                    grams[tuple(self._tokens[end - n : end])] = end

    def propose(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the longest recent suffix before; [] when
        no suffix of ``min_n``.. ``max_n`` tokens occurred earlier. Stops at an id outside
        the model's vocabulary (a prompt may carry one the tokenizer knows and the
        embedding does not)."""
        tokens = self._tokens
        if limit <= 0:
            return []
        for n in range(min(self.max_n, len(tokens)), self.min_n - 1, -1):
            start = self._index[n].get(tuple(tokens[-n:]))
            if start is None:
                continue
            draft = []
            for token in tokens[start : start + limit]:
                if not 0 <= token < self._vocab:
                    break
                draft.append(token)
            return draft
        return []
