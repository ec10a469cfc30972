"""The packed step's attention (generation/model/packed.py) against attention computed the plain
way, one query at a time over its own row's keys, on random tensors: decode rows, several
prompt chunks, a chunk after a cached prefix, holes among the decode rows, a sliding
window, grouped-query heads, and rows that fill their slot to the last column."""

from __future__ import annotations

import math

import pytest
import torch
from zopilot_server.generation.kv.kv_arena import ArenaShape, ArenaSize, KVArena
from zopilot_server.generation.kv.prefix_cache import PrefixIndex
from zopilot_server.generation.model.packed import StepCache, StepLayout, attend

HEADS, KV_HEADS, HEAD_DIM, CAPACITY, SLOTS = 6, 2, 8, 64, 5


def _arena(seed: int) -> KVArena:
    shape = ArenaShape(layers=2, kv_heads=KV_HEADS, head_dim=HEAD_DIM, dtype=torch.float32)
    size = ArenaSize(SLOTS, CAPACITY, 0)
    arena = KVArena(shape, size, torch.device("cpu"), PrefixIndex(SLOTS, "t", enabled=False))
    generator = torch.Generator().manual_seed(seed)
    for buffers in (arena.keys, arena.values):
        for layer in buffers:
            layer.copy_(torch.randn(layer.shape, generator=generator))
    return arena


def _reference(
    arena: KVArena, layer: int, q: torch.Tensor, slot: int, position: int, window: int | None
) -> torch.Tensor:
    """One query [H, d] at ``position`` of the row in ``slot``: softmax over its columns."""
    first = 0 if window is None else max(0, position - window + 1)
    keys = arena.keys[layer][slot, :, first : position + 1]  # [kv, n, d]
    values = arena.values[layer][slot, :, first : position + 1]
    group = HEADS // KV_HEADS
    out = []
    for head in range(HEADS):
        scores = keys[head // group] @ q[head] / math.sqrt(HEAD_DIM)
        out.append(torch.softmax(scores, dim=0) @ values[head // group])
    return torch.stack(out)


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize(
    ("decode", "chunks"),
    [
        pytest.param([(0, 10), (1, 3), (2, 40)], [], id="decode-rows"),
        pytest.param([], [(0, 0, 12), (3, 0, 7)], id="chunks-from-the-start"),
        pytest.param([(1, 20)], [(0, 16, 30), (4, 0, 9)], id="decode-and-a-chunk-after-a-prefix"),
        pytest.param([(0, 5), (3, 9)], [(2, 4, 6)], id="decode-rows-with-holes"),
        pytest.param([(0, CAPACITY - 1)], [(1, CAPACITY - 3, CAPACITY)], id="slot-edges"),
    ],
)
def test_packed_attention_equals_each_query_over_its_own_row(decode, chunks, window) -> None:
    arena = _arena(seed=len(decode) * 10 + len(chunks))
    layout = StepLayout(arena, decode, chunks, window=window, device=torch.device("cpu"))
    tokens = layout.tokens
    generator = torch.Generator().manual_seed(7)
    new_k = torch.randn((1, KV_HEADS, tokens, HEAD_DIM), generator=generator)
    new_v = torch.randn((1, KV_HEADS, tokens, HEAD_DIM), generator=generator)
    query = torch.randn((1, HEADS, tokens, HEAD_DIM), generator=generator)
    layer = 1
    StepCache(layout).update(new_k, new_v, layer)
    got = attend(layout, layer, query, None)
    where = [(s, p) for s, p in decode]
    where += [(slot, p) for slot, start, end in chunks for p in range(start, end)]
    for t, (slot, position) in enumerate(where):
        # The step's own K/V landed at the token's column before anyone attended.
        assert torch.equal(arena.keys[layer][slot, :, position], new_k[0, :, t])
        assert torch.equal(arena.values[layer][slot, :, position], new_v[0, :, t])
    for t, (slot, position) in enumerate(where):
        want = _reference(arena, layer, query[0, :, t], slot, position, window)
        torch.testing.assert_close(got[0, :, t], want, rtol=1e-4, atol=1e-5)


def test_a_layer_whose_attention_bypasses_sdpa_is_refused_not_served_wrong() -> None:
    """A cache update while the previous layer's attention never reached SDPA (an eager
    attention class) raises: the load-time self test then serves the model serially."""
    arena = _arena(seed=1)
    layout = StepLayout(arena, [(0, 3)], [], window=None, device=torch.device("cpu"))
    cache = StepCache(layout)
    states = torch.zeros((1, KV_HEADS, 1, HEAD_DIM))
    cache.update(states, states, 0)
    with pytest.raises(RuntimeError, match="did not go through scaled_dot_product_attention"):
        cache.update(states, states, 1)
