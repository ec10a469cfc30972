"""Prefix reuse over the KV arena: which slot already holds the KV of a prompt's start.

Every slot's columns hold the KV of a token sequence, its *content*: the prompt and
generated tokens of the row living there, and, once that row has left, the same tokens
until the slot is given to another row (free slots are a cache, reused least recently
used first). Contents are indexed by blocks of ``BLOCK_TOKENS`` token ids, each block's
key hashing the block with the key of the one before (vLLM's hash chain), so one lookup
per block finds every slot whose content starts with the same blocks. Keys are token ids
seeded with the model's identity (path, dtype, quantization): an index lives and dies
with one loaded model anyway, and a different model can never hit. A slot's content also
has a *namespace*, the LoRA adapter its KV was computed with ("" = the base model): it
seeds the chain too, so the same tokens through two adapters never share KV.

Only whole blocks are reused, and never a prompt's last token: its logits must be
computed fresh. A request that opts out (``private``) neither reads the index nor
leaves its tokens in it. Torch-free: the runner does the copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

BLOCK_TOKENS = 16


@dataclass
class _Slot:
    content: list[int] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)  # one chain key per whole block
    private: bool = False
    last_used: int = 0
    namespace: str = ""


@dataclass(frozen=True)
class Match:
    """The best cached prefix for a prompt: ``tokens`` of it in ``slot``."""

    slot: int
    tokens: int


class PrefixIndex:
    """Slot contents and their block keys, for one arena."""

    def __init__(self, slots: int, seed: str, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._seed = hash(seed)
        self._slots = [_Slot() for _ in range(slots)]
        self._owners: dict[int, set[int]] = {}
        self._clock = 0

    # -- lookups ---------------------------------------------------------------------------
    def _start(self, namespace: str) -> int:
        return hash((self._seed, namespace)) if namespace else self._seed

    def chain(self, tokens: Sequence[int], namespace: str = "") -> list[int]:
        """The chain keys of ``tokens``' whole blocks."""
        keys, key = [], self._start(namespace)
        for start in range(0, len(tokens) - BLOCK_TOKENS + 1, BLOCK_TOKENS):
            key = hash((key, tuple(tokens[start : start + BLOCK_TOKENS])))
            keys.append(key)
        return keys

    def longest(
        self, prompt: Sequence[int], among: set[int] | None = None, *, namespace: str = ""
    ) -> Match | None:
        """The slot (of ``among``, default all) whose content shares the most whole
        blocks with ``prompt``, at most ``len(prompt) - 1`` tokens; ties go to the least
        recently used slot, then the lowest."""
        if not self.enabled:
            return None
        best: set[int] = set()
        depth = 0
        for i, key in enumerate(self.chain(prompt[: max(0, len(prompt) - 1)], namespace)):
            owners = self._owners.get(key, set())
            if among is not None:
                owners = owners & among
            if not owners:
                break
            best, depth = owners, i + 1
        if not depth:
            return None
        tokens = depth * BLOCK_TOKENS
        for slot in sorted(best, key=lambda s: (self._slots[s].last_used, s)):
            state = self._slots[slot]
            if state.namespace == namespace and state.content[:tokens] == list(prompt[:tokens]):
                return Match(slot, tokens)  # no collision
        return None

    def lru(self, free: Sequence[int]) -> int:
        """The free slot whose cached content is worth least: the lowest empty one (the
        runner keeps rows packed low), else the least recently used."""

        def worth(slot: int) -> tuple[bool, int, int]:
            state = self._slots[slot]
            return (bool(state.keys), state.last_used if state.keys else 0, slot)

        return min(free, key=worth)

    # -- updates -----------------------------------------------------------------------------
    def claim(self, slot: int, keep: int, *, private: bool, namespace: str = "") -> None:
        """A new row takes ``slot``, keeping the first ``keep`` tokens of its content
        (none when its KV was computed in another namespace)."""
        state = self._slots[slot]
        self._truncate(slot, keep if state.namespace == namespace else 0)
        state.namespace = namespace
        if private:
            self._truncate(slot, 0)
        state.private = private

    def copy(self, source: int, target: int, tokens: int, *, private: bool) -> None:
        """``target`` now holds the first ``tokens`` of ``source``'s content."""
        self._truncate(target, 0)
        self._slots[target].private = private
        self._slots[target].namespace = self._slots[source].namespace
        self.extend(target, self._slots[source].content[:tokens])

    def extend(self, slot: int, tokens: Sequence[int]) -> None:
        """The row in ``slot`` wrote the KV of ``tokens`` after its current content."""
        state = self._slots[slot]
        if state.private:
            return
        start = len(state.keys) * BLOCK_TOKENS
        state.content.extend(tokens)
        key = state.keys[-1] if state.keys else self._start(state.namespace)
        for begin in range(start, len(state.content) - BLOCK_TOKENS + 1, BLOCK_TOKENS):
            key = hash((key, tuple(state.content[begin : begin + BLOCK_TOKENS])))
            state.keys.append(key)
            if self.enabled:
                self._owners.setdefault(key, set()).add(slot)

    def moved(self, source: int, target: int) -> None:
        """A row was copied from ``source`` to ``target``; ``source`` keeps its content
        as a cache."""
        self.copy(
            source, target, len(self._slots[source].content), private=self._slots[source].private
        )
        if self._slots[source].private:
            self._truncate(source, 0)

    def released(self, slot: int) -> None:
        """The slot's row left; its content stays as a cache (not a private row's)."""
        state = self._slots[slot]
        self._clock += 1
        state.last_used = self._clock
        if state.private:
            self._truncate(slot, 0)
            state.private = False

    def drop(self, slots: Sequence[int]) -> int:
        """Forget what ``slots`` hold (free slots: a gateway's FlushCache); returns the
        whole blocks forgotten. Never a running row's slot: its index must follow its
        columns."""
        dropped = 0
        for slot in slots:
            dropped += len(self._slots[slot].keys)
            self._truncate(slot, 0)
        return dropped

    def _truncate(self, slot: int, keep: int) -> None:
        state = self._slots[slot]
        blocks = keep // BLOCK_TOKENS
        for key in state.keys[blocks:]:
            owners = self._owners.get(key)
            if owners is not None:
                owners.discard(slot)
                if not owners:
                    del self._owners[key]
        del state.keys[blocks:]
        del state.content[blocks * BLOCK_TOKENS :]
