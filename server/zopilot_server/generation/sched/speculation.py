"""How many draft tokens each decoding row may verify this step (torch-free).

Speculative decoding pays off when a step's extra query tokens cost less than the steps
they save. A step of ``B`` decoding rows costs about ``decode_s``; each drafted token
adds about ``token_s`` (StepCost learns both as the server runs) and yields a token
only if it and every draft token before it are accepted. With a row's per-token
acceptance rate ``a``, the ``d``-th draft token yields ``a ** d`` tokens on average and
costs ``token_s / decode_s`` of a step, which makes ``B`` tokens: it is worth drafting
while ``a ** d > B * token_s / decode_s``. So a lone stream copying a passage drafts the
most (``a`` near 1, the step is all weight reads), an ordinary chat's rows draft little
or nothing once their drafts are rejected, and a batch large enough that the step is
compute-bound drafts less. Every ``PROBE_EVERY`` steps one step carries no draft, so
``decode_s`` stays measured while drafts run.

Each row's rate is learned from its own verifications (RequestRecord.drafts), starting
from an optimistic prior and drifting back to it while the row does not draft, so a row
whose text turns repetitive later gets to try again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# A step without drafts every this many, so the cost of a pure decode step stays known.
PROBE_EVERY = 32
# The acceptance rate a row starts from, worth this many draft tokens of evidence.
PRIOR_RATE = 0.7
PRIOR_WEIGHT = 2.0
# How fast old evidence fades: per verification, and per step a row could not draft.
DECAY = 0.9
IDLE_DECAY = 0.95


@dataclass
class DraftStats:
    """One request's acceptance rate (its totals, for Usage, are on its RunControl)."""

    _tried: float = 0.0  # draft positions verified (decayed): accepted + the first rejected
    _agreed: float = 0.0  # of those, accepted (decayed)

    @property
    def rate(self) -> float:
        """Probability that a draft token is accepted given the ones before it were."""
        return (self._agreed + PRIOR_RATE * PRIOR_WEIGHT) / (self._tried + PRIOR_WEIGHT)

    def verified(self, drafted: int, accepted: int) -> None:
        self._tried = DECAY * self._tried + accepted + (accepted < drafted)
        self._agreed = DECAY * self._agreed + accepted

    def idle(self) -> None:
        self._tried *= IDLE_DECAY
        self._agreed *= IDLE_DECAY


@dataclass(frozen=True)
class DraftRow:
    """A decoding row as the policy sees it."""

    key: int
    stats: DraftStats
    tokens_left: int  # tokens it may still produce (max_new_tokens - produced)


class DraftPolicy:
    """Allowances per step: ``max_tokens`` per row at most (--speculative-tokens)."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._since_pure = PROBE_EVERY  # the first decode steps measure decode_s

    def allowances(
        self,
        rows: Sequence[DraftRow],
        *,
        decode_s: float | None,
        token_s: float | None,
        budget: int,
    ) -> tuple[tuple[int, int], ...]:
        """(row, most draft tokens) for this step, within ``budget`` tokens in all."""
        if not self.max_tokens or not rows or decode_s is None or self._since_pure >= PROBE_EVERY:
            return ()
        value = len(rows) * (token_s or 0.0) / decode_s  # a draft token's cost, in tokens
        granted = []
        for row in sorted(rows, key=lambda r: -r.stats.rate):
            want = min(self.max_tokens, row.tokens_left - 1, budget, _worth(row.stats.rate, value))
            if want <= 0:
                row.stats.idle()
                continue
            granted.append((row.key, want))
            budget -= want
        return tuple(granted)

    def stepped(self, extra_tokens: int) -> None:
        """A step ran with this many query tokens beyond one per decoding row."""
        self._since_pure = 0 if not extra_tokens else self._since_pure + 1


def _worth(rate: float, cost: float) -> int:
    """Draft tokens worth verifying: the largest d with rate ** d > cost."""
    if cost <= 0:
        return 1 << 30
    if rate <= cost:
        return 0
    if rate >= 1.0:
        return 1 << 30
    return max(0, math.ceil(math.log(cost) / math.log(rate)) - 1)
