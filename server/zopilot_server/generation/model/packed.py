"""One packed forward per step: decode rows and prompt chunks flattened into ``[1, T]``.

A step's query tokens (one per decoding row, then each prompt chunk's tokens) run as one
sequence through the model, with no padded query tokens: every token carries its own
position (= its column in its row's arena slot). The model's own code computes the
projections and rotary embeddings; only attention differs, because each token may attend
to its own row's columns only:

- the step's new K/V are written in place into the arena at (slot, column) per token
  (``StepCache.update``: one ``index_put`` per layer for K and one for V);
- the decoding rows attend together, one SDPA per run of consecutive slots read in
  place (``[rows, kv_heads, view, head_dim]``, a view, no gather), a key mask per row;
  rows never move to close gaps, so free slots keep their prefix cache;
- each prompt chunk attends alone over its slot's columns ``0..end`` with an
  offset-causal mask (plain ``is_causal`` when the chunk starts the row);
- grouped-query attention runs without ``repeat_kv`` copies (SDPA's ``enable_gqa``).

How the attention is installed: every SDPA attention class of transformers 4.45 (the
image) and of the newer releases (the quantization suite's 4.57) ends in
``torch.nn.functional.scaled_dot_product_attention`` right after ``Cache.update``.
``install`` wraps the forward of the model's attention modules: given a packed step's
cache, the module runs under a ``TorchFunctionMode`` (per thread, only for that module's
forward) that routes that one call to ``attend`` for the layer the cache was just
updated for; the model's projections, rotary embeddings, scaling and output projection
stay the model's own. One mechanism for every architecture and both transformers
lines, instead of a forward per attention class and version; what it cannot serve is
caught by the runner's load-time self test and served serially.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from transformers import Cache

from ..kv.kv_arena import KVArena, bucket


@dataclass(frozen=True)
class ChunkSpan:
    """A prompt chunk inside the packed sequence: tokens ``offset:offset+count`` of the
    step are positions ``start:start+count`` of the row in ``slot``."""

    slot: int
    start: int
    offset: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count


class StepLayout:
    """Where each query token of one packed step lives, built once per step and read
    by every layer: write coordinates, the decode group and the chunks with their masks.

    ``decode``: (slot, position) of each decoding row's one token, in slot order;
    ``chunks``: the prompt chunks after them. ``window``: the model's sliding window.
    """

    def __init__(
        self,
        arena: KVArena,
        decode: Sequence[tuple[int, int]],
        chunks: Sequence[tuple[int, int, int]],
        *,
        window: int | None,
        device: torch.device,
    ) -> None:
        self.arena = arena
        self.window = window
        self.layer = -1  # the layer whose K/V were written last (set by StepCache.update)
        slots: list[int] = [s for s, _ in decode]
        cols: list[int] = [p for _, p in decode]
        self.chunks: list[ChunkSpan] = []
        offset = len(decode)
        for slot, start, end in chunks:
            self.chunks.append(ChunkSpan(slot, start, offset, end - start))
            slots += [slot] * (end - start)
            cols += range(start, end)
            offset += end - start
        self.tokens = offset
        positions = torch.tensor(cols, dtype=torch.long)
        self.positions = positions.to(device)
        # Where each token's K/V go in a layer's buffer viewed as rows of head_dim:
        # (slot, kv head, column) flattened, heads major (the order of states[0]).
        heads, columns = arena.shape.kv_heads, arena.size.tokens_per_slot
        per_head = torch.tensor(slots, dtype=torch.long)[None, :] * heads
        per_head = per_head + torch.arange(heads)[:, None]
        self.write_index = (per_head * columns + positions[None, :]).reshape(-1).to(device)
        self.decode_groups = self._decode_groups(decode, device)
        self.chunk_masks = [self._chunk_mask(c, device) for c in self.chunks]

    def _decode_groups(
        self, decode: Sequence[tuple[int, int]], device: torch.device
    ) -> list[tuple[int, int, int, torch.Tensor]]:
        """The decoding rows as batches over runs of consecutive slots: (first slot,
        rows, view, key mask [rows, 1, 1, view]). Each run reads its slots as one view of
        the arena (no gather); rows are not moved to close gaps, so a finished request's
        slot keeps its prefix cache."""
        groups = []
        start = 0
        for end in range(1, len(decode) + 1):
            if end < len(decode) and decode[end][0] == decode[end - 1][0] + 1:
                continue
            run = decode[start:end]
            positions = torch.tensor([p for _, p in run], dtype=torch.long)
            view = bucket(int(positions.max()) + 1, self.arena.size.tokens_per_slot)
            mask = self._mask(positions[:, None], view).to(device)[:, None, None]
            groups.append((run[0][0], len(run), view, mask))
            start = end
        return groups

    def _chunk_mask(self, chunk: ChunkSpan, device: torch.device) -> torch.Tensor | None:
        """None when plain causal attention is exact: the chunk starts its row, no window."""
        if chunk.start == 0 and (self.window is None or chunk.count <= self.window):
            return None
        positions = torch.arange(chunk.start, chunk.end)[:, None]
        return self._mask(positions, chunk.end).to(device)

    def _mask(self, positions: torch.Tensor, view: int) -> torch.Tensor:
        """[q, view] bool, True where a query at ``positions`` attends: its row's columns
        up to itself (within the window)."""
        cols = torch.arange(view)
        allowed = cols <= positions
        if self.window is not None:
            allowed &= cols > positions - self.window
        return allowed


def attend(
    layout: StepLayout, layer: int, query: torch.Tensor, scale: float | None
) -> torch.Tensor:
    """The packed step's attention in ``layer``: ``query`` [1, H, T, d] (after rotary)
    -> [1, H, T, d], each token over its own row's arena columns."""
    keys = layout.arena.keys[layer]
    values = layout.arena.values[layer]
    q = query[0]  # [H, T, d]
    out = torch.empty_like(q)
    offset = 0
    for lo, rows, view, mask in layout.decode_groups:
        span = slice(offset, offset + rows)
        got = F.scaled_dot_product_attention(
            q[:, span].transpose(0, 1)[:, :, None],  # [rows, H, 1, d]
            keys[lo : lo + rows, :, :view],
            values[lo : lo + rows, :, :view],
            attn_mask=mask,
            scale=scale,
            enable_gqa=True,
        )
        out[:, span] = got[:, :, 0].transpose(0, 1)
        offset += rows
    for chunk, mask in zip(layout.chunks, layout.chunk_masks, strict=True):
        span = slice(chunk.offset, chunk.offset + chunk.count)
        s = chunk.slot
        out[:, span] = F.scaled_dot_product_attention(
            q[None, :, span],
            keys[s : s + 1, :, : chunk.end],
            values[s : s + 1, :, : chunk.end],
            attn_mask=mask,
            is_causal=mask is None,
            scale=scale,
            enable_gqa=True,
        )[0]
    return out[None]


class StepCache(Cache):
    """The ``Cache`` a packed forward sees: ``update`` writes the step's K/V into the
    arena in place and returns a one-column stand-in, so the model's own attention call
    (replaced by ``attend``) and its ``repeat_kv`` cost nothing."""

    def __init__(self, layout: StepLayout) -> None:
        # transformers >= 4.56 wants layer objects we do not use (TypeError or ValueError)
        with contextlib.suppress(TypeError, ValueError):
            super().__init__()
        self.layout = layout

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.layout
        if layout.layer >= 0:
            raise RuntimeError(
                f"layer {layout.layer}'s attention did not go through "
                "scaled_dot_product_attention: the packed step cannot serve this model"
            )
        arena = layout.arena
        for buffers, states in ((arena.keys, key_states), (arena.values, value_states)):
            buffer = buffers[layer_idx]
            rows = states[0].reshape(-1, states.shape[-1]).to(buffer.dtype)
            buffer.view(-1, buffer.shape[-1]).index_copy_(0, layout.write_index, rows)
        layout.layer = layer_idx
        return key_states[:, :, :1], value_states[:, :, :1]

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return 0

    def get_max_length(self) -> int | None:
        return None

    def get_max_cache_shape(self) -> int | None:
        return None

    def get_usable_length(self, new_seq_length: int, layer_idx: int | None = 0) -> int:
        return 0


class _RouteAttention(TorchFunctionMode):
    """Inside one attention module's forward of a packed step: its SDPA call becomes
    ``attend``. A torch function mode is per thread, and it is entered only around the
    attention modules, so nothing else pays for the dispatch."""

    def __init__(self, layout: StepLayout) -> None:
        super().__init__()
        self.layout = layout

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        layer = self.layout.layer
        if func is F.scaled_dot_product_attention and layer >= 0:
            self.layout.layer = -1  # one attention call per cache update
            query = args[0] if args else kwargs["query"]  # GPT-NeoX passes it by name
            return attend(self.layout, layer, query, kwargs.get("scale"))
        return func(*args, **kwargs)


def _routed(forward: Callable[..., Any]) -> Callable[..., Any]:
    """``forward`` of an attention module, routed to ``attend`` when the cache it is
    given is a packed step's (whatever the keyword: past_key_value(s), layer_past)."""

    @functools.wraps(forward)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cache = next((v for v in kwargs.values() if isinstance(v, StepCache)), None)
        if cache is None:
            return forward(*args, **kwargs)
        with _RouteAttention(cache.layout):
            return forward(*args, **kwargs)

    wrapper.zopilot_packed = True  # type: ignore[attr-defined]
    return wrapper


def install(model: torch.nn.Module) -> int:
    """Route the attention modules of ``model`` (an ``...Attention`` class that owns a
    ``layer_idx``: the ones that call ``Cache.update``); returns how many. Idempotent."""
    count = 0
    for module in model.modules():
        if "Attention" not in type(module).__name__:
            continue
        if not isinstance(getattr(module, "layer_idx", None), int):
            continue
        if not getattr(module.forward, "zopilot_packed", False):
            module.forward = _routed(module.forward)
        count += 1
    return count
