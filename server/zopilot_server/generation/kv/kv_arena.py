"""The KV arena: every running row's keys and values, in buffers allocated once.

Per layer one K and one V buffer ``[slots, kv_heads, capacity, head_dim]``. A row
lives in one slot with its tokens at columns ``0..n-1`` (position = column), so a row
joins by taking a free slot and leaves by freeing it: no left padding, no ``torch.cat``
per step, no re-padding at joins, and what admission counts (slots) is what memory
holds. A row never moves: the packed step (packed.py) reads every run of consecutive
slots as a *view* of the buffers (indexing slots with a tensor would copy every layer
every step), and a freed slot keeps its columns as a prefix cache.

Why uniform slots rather than paged blocks: without a paged-attention kernel, blocks
would have to be gathered into a contiguous tensor for every layer of every step,
which is the copy this arena exists to remove. The price is that every slot reserves
the full capacity; on CPU the buffers come from calloc'ed pages (numpy), so unused
columns cost address space, not RSS, and on CUDA the capacity is sized from the
memory budget (docs/operations.md, "Sizing a GPU", says how).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .prefix_cache import PrefixIndex

log = logging.getLogger(__name__)

# Attended lengths are rounded up to a multiple of this, so step shapes repeat.
LENGTH_BUCKET = 64
MIB = 1024 * 1024


@dataclass(frozen=True)
class ArenaShape:
    """What one token costs and how the arena is laid out."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.layers * self.kv_heads * self.head_dim * element


@dataclass(frozen=True)
class ArenaSize:
    """Slots x tokens per slot, and the bytes they take (GetModelInfo, metrics, logs)."""

    slots: int
    tokens_per_slot: int
    bytes: int


def arena_shape(model: Any) -> ArenaShape | None:
    """K/V geometry read from the model config; None when it does not say (then the
    model cannot use the arena)."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if not (layers and heads and hidden):
        return None
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return ArenaShape(int(layers), int(kv_heads), int(head_dim), model.dtype)


def plan_size(
    shape: ArenaShape,
    *,
    budget_bytes: int,
    max_slots: int,
    max_context: int,
    tokens_per_slot: int = 0,
) -> ArenaSize:
    """Slots and capacity from a memory budget.

    ``tokens_per_slot`` 0 picks the largest capacity (up to the model's context, in
    multiples of LENGTH_BUCKET) with which ``max_slots`` slots fit the budget, so the
    batch size is kept and requests lose as little length as the memory allows.
    """
    per_token = shape.bytes_per_token
    budget_tokens = max(0, budget_bytes) // per_token
    if tokens_per_slot <= 0:
        fair = budget_tokens // max(1, max_slots)
        tokens_per_slot = min(
            max_context, max(LENGTH_BUCKET, fair // LENGTH_BUCKET * LENGTH_BUCKET)
        )
    tokens_per_slot = max(1, min(tokens_per_slot, max_context))
    slots = min(max_slots, budget_tokens // tokens_per_slot)
    if slots < 1:
        raise ValueError(
            f"the KV cache budget ({budget_bytes / MIB:.0f} MiB) does not hold one slot of "
            f"{tokens_per_slot} tokens ({per_token} bytes per token): raise "
            "--kv-cache-memory-mib / --kv-cache-memory-fraction or lower --kv-slot-tokens"
        )
    return ArenaSize(slots, tokens_per_slot, slots * tokens_per_slot * per_token)


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeroed buffer. On CPU numpy's calloc gives pages the kernel zeroes on first touch,
    so RSS grows with the columns written, not with the arena's size."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.zeros(shape, dtype=np.uint16)).view(torch.bfloat16)
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    return torch.from_numpy(np.zeros(shape, dtype=np_dtype))


class KVArena:
    """The buffers, which slot each row lives in, and what every slot's columns hold
    (``prefix``, for reuse). Touched by the scheduler thread only."""

    def __init__(
        self, shape: ArenaShape, size: ArenaSize, device: torch.device, prefix: PrefixIndex
    ) -> None:
        self.shape = shape
        self.size = size
        self.device = device
        self.prefix = prefix
        dims = (size.slots, shape.kv_heads, size.tokens_per_slot, shape.head_dim)
        self.keys = [_zeros(dims, shape.dtype, device) for _ in range(shape.layers)]
        self.values = [_zeros(dims, shape.dtype, device) for _ in range(shape.layers)]
        self.slot_of: dict[int, int] = {}
        self.length: dict[int, int] = {}  # tokens of the row held in its slot

    @property
    def tokens_used(self) -> int:
        return sum(self.length.values())

    def free_slots(self) -> list[int]:
        taken = set(self.slot_of.values())
        return [s for s in range(self.size.slots) if s not in taken]

    def assign(self, key: int, prompt: Sequence[int], *, private: bool, namespace: str = "") -> int:
        """Give a new row a free slot; returns how many of its prompt tokens the slot
        already holds. A free slot caching the longest prefix is taken as it is (zero
        copy: a conversation's next turn lands where its history is); a longer prefix in
        another slot is copied over (one copy per layer: a system prompt many users
        share); otherwise the least recently used free slot. Only KV computed in the
        same ``namespace`` (the same LoRA adapter, or none) is reused."""
        free = self.free_slots()
        if not free:
            raise RuntimeError("no free KV slot")
        index = self.prefix
        at_rest = None if private else index.longest(prompt, among=set(free), namespace=namespace)
        anywhere = None if private else index.longest(prompt, namespace=namespace)
        if at_rest is not None and (anywhere is None or anywhere.tokens <= at_rest.tokens):
            slot, cached = at_rest.slot, at_rest.tokens
            index.claim(slot, cached, private=private, namespace=namespace)
        else:
            slot = index.lru(free)
            cached = 0
            if anywhere is not None:
                cached = anywhere.tokens
                self._copy_columns(anywhere.slot, slot, cached)
                index.copy(anywhere.slot, slot, cached, private=private)
            else:
                index.claim(slot, 0, private=private, namespace=namespace)
        self.slot_of[key] = slot
        self.length[key] = cached
        return cached

    def refresh(self, key: int, prompt: Sequence[int], *, namespace: str = "") -> int:
        """A row that has computed nothing past its cached prefix takes a longer one that
        another slot now holds (a prefix it waited for); returns its cached tokens."""
        slot, have = self.slot_of[key], self.length[key]
        others = set(range(self.size.slots)) - {slot}
        match = self.prefix.longest(prompt, among=others, namespace=namespace)
        if match is None or match.tokens <= have:
            return have
        self._copy_columns(match.slot, slot, match.tokens)
        self.prefix.copy(match.slot, slot, match.tokens, private=False)
        self.length[key] = match.tokens
        return match.tokens

    def wrote(self, key: int, tokens: Sequence[int]) -> None:
        """The row's forward succeeded: its slot now holds these tokens' KV too."""
        self.length[key] += len(tokens)
        self.prefix.extend(self.slot_of[key], tokens)

    def flush_prefix_cache(self) -> int:
        """Drop the prefix cache the free slots hold (running rows keep theirs); returns
        the blocks dropped."""
        return self.prefix.drop(self.free_slots())

    def release(self, key: int) -> None:
        slot = self.slot_of.pop(key, None)
        self.length.pop(key, None)
        if slot is not None:
            self.prefix.released(slot)

    def _copy_columns(self, source: int, target: int, n: int) -> None:
        if n:
            for buffers in (self.keys, self.values):
                for layer in buffers:
                    layer[target, :, :n].copy_(layer[source, :, :n])


def bucket(length: int, limit: int) -> int:
    return min(limit, max(LENGTH_BUCKET, math.ceil(length / LENGTH_BUCKET) * LENGTH_BUCKET))


@dataclass(frozen=True)
class ArenaBudget:
    """How much memory the arena may take (ServerConfig's KV cache flags)."""

    memory_mib: int = 0  # 0: on CUDA use ``memory_fraction``, elsewhere CPU_DEFAULT_MIB
    memory_fraction: float = 0.9  # CUDA: of the memory free after loading the model
    tokens_per_slot: int = 0  # 0: the largest that keeps max_batch_size slots


# Without a device to size against: a quarter of RAM, at most 8 GiB. CPU buffers cost RSS
# only for the columns rows actually write (see _zeros).
CPU_MAX_DEFAULT_MIB = 8192


def budget_bytes(budget: ArenaBudget, device: torch.device) -> int:
    if budget.memory_mib > 0:
        return budget.memory_mib * MIB
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * budget.memory_fraction)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 4 * CPU_MAX_DEFAULT_MIB * MIB
    return min(CPU_MAX_DEFAULT_MIB * MIB, ram // 4)
