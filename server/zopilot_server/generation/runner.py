"""The model side of continuous batching: forwards over the KV arena.

The scheduler decides what each step computes (plan.py); this module turns that into
model forwards. Every forward covers one contiguous range of arena slots (kv_arena.py)
and is given, per query token, its position (= its column in the row's slot) and a 4D
mask over the attended columns, so rows of any length decode together without padding
their caches. Prefill chunks of several rows run as one forward, left-aligned to the
chunks' end so ``logits_to_keep=1`` gives each finishing row its next-token logits.

A forward that fails leaves nothing to undo: a row's length advances only after its
step succeeded, and the columns a failed forward wrote are rewritten by the retry.

Architectures whose forward cannot write into our ``Cache`` (GPT-2 and other legacy
tuple caches in transformers 4.45, sliding-window hybrids) are detected at load by
``self_test`` and served by ``SerialRunner``: one request at a time on the model's own
cache, through the same token choice and streaming. Slower, never broken.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch

from .domain import GenerationRequest
from .kv_arena import ArenaCache, ArenaSize, KVArena, arena_shape, bucket
from .model_loader import LoadedModel
from .plan import ArenaInfo, PrefillChunk, RowSpec, Step
from .prefix_cache import BLOCK_TOKENS, PrefixIndex
from .sampling import RowState, TokenChooser, new_row

log = logging.getLogger(__name__)

# Model types whose attention needs a cache we do not provide (per-layer sliding windows,
# recurrent state): they are served serially without trying the arena.
SERIAL_MODEL_TYPES = frozenset(
    {"gemma2", "cohere2", "mamba", "mamba2", "falcon_mamba", "jamba", "zamba", "recurrent_gemma"}
)


def _inference(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run under inference_mode: no autograd bookkeeping per op, a sizeable share of a
    small model's step."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            return method(*args, **kwargs)

    return wrapper


class _ModelCalls:
    """What both runners share: the forward call and the rows' token choice."""

    def __init__(self, loaded: LoadedModel) -> None:
        self._model = loaded.model
        self.device = loaded.model.device
        self.vocab = int(loaded.model.get_output_embeddings().weight.shape[0])
        eos = sorted(loaded.eos_token_ids)
        pad = loaded.tokenizer.pad_token_id
        self._pad = pad if pad is not None and pad < self.vocab else next(iter(eos), 0)
        self._chooser = TokenChooser(loaded.tokenizer, eos)
        self.rows: dict[int, RowState] = {}
        params = inspect.signature(self._model.forward).parameters
        self._keep_arg = next(
            (n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None
        )

    def _new_rows(self, specs: Sequence[RowSpec]) -> None:
        for spec in specs:
            self.rows[spec.key] = new_row(spec.key, spec.request, self.vocab, self.device)

    def _forward(self, **kwargs: Any) -> Any:
        if self._keep_arg is not None:
            kwargs[self._keep_arg] = 1
        return self._model(use_cache=True, **kwargs)

    def release_memory(self) -> None:
        """After an OOM, hand cached blocks back so the next step does not fragment."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class ModelRunner(_ModelCalls):
    """Prefill chunks and decode steps over the KV arena (the scheduler's Runner)."""

    def __init__(self, loaded: LoadedModel, size: ArenaSize, *, prefix_cache: bool = True) -> None:
        super().__init__(loaded)
        shape = arena_shape(loaded.model)
        assert shape is not None
        identity = f"{loaded.model_id}|{loaded.dtype}|{loaded.quantization.describe()}"
        prefix = PrefixIndex(size.slots, identity, enabled=prefix_cache)
        self.arena = KVArena(shape, size, self.device, prefix)
        config = loaded.model.config
        window = getattr(config, "sliding_window", None)
        self._window = window if window and getattr(config, "use_sliding_window", True) else None
        self.info = ArenaInfo(
            "arena",
            size.slots,
            size.tokens_per_slot,
            size.bytes,
            prefix_cache=prefix_cache,
            prefix_block_tokens=BLOCK_TOKENS if prefix_cache else 0,
        )

    @property
    def kv_tokens_used(self) -> int:
        return self.arena.tokens_used

    def add(self, specs: Sequence[RowSpec]) -> dict[int, int]:
        """New rows take free slots (kv_arena.KVArena.assign); returns the prompt tokens
        each one's slot already holds (prefix reuse), which need no prefill."""
        cached = {}
        for spec in specs:
            request = spec.request
            cached[spec.key] = self.arena.assign(
                spec.key, request.input_ids, private=request.private
            )
        self._new_rows(specs)
        return cached

    @_inference
    def prefill(self, chunks: Sequence[PrefillChunk]) -> list[Step]:
        """Compute the chunks' prompt tokens; the first token of every row whose prompt
        is now complete."""
        by_key = {c.key: c for c in chunks}
        lo, hi = self.arena.span(list(by_key))
        q = max(c.end - c.start for c in chunks)
        keys = self._keys_in(lo, hi)
        positions = torch.full((hi - lo, q), -1, dtype=torch.long)
        ids = torch.full((hi - lo, q), self._pad, dtype=torch.long)
        for i, key in enumerate(keys):
            chunk = by_key.get(key)
            if chunk is None:
                continue
            n = chunk.end - chunk.start
            prompt = self.rows[key].request.input_ids[chunk.start : chunk.end]
            ids[i, q - n :] = torch.tensor(prompt, dtype=torch.long)
            positions[i, q - n :] = torch.arange(chunk.start, chunk.end)
        logits = self._run(lo, hi, ids, positions)
        done = [
            (i, k)
            for i, k in enumerate(keys)
            if k in by_key and by_key[k].end == len(self.rows[k].request.input_ids)
        ]
        steps = (
            self._chooser.choose([self.rows[k] for _, k in done], logits[[i for i, _ in done]])
            if done
            else []
        )
        for key, chunk in by_key.items():
            self.arena.wrote(key, self.rows[key].request.input_ids[chunk.start : chunk.end])
        if steps:
            self.compact()  # a joiner above a hole moves down next to the decoding rows
        return steps

    @_inference
    def reuse(self, key: int) -> int:
        """The prompt tokens row ``key`` now finds cached (it waited for a prefix)."""
        return self.arena.refresh(key, self.rows[key].request.input_ids)

    @_inference
    def decode(self, keys: Collection[int]) -> list[Step]:
        """One token for each of ``keys`` (rows whose prompt is complete)."""
        wanted = set(keys)
        lo, hi = self.arena.span(list(wanted))
        positions = torch.full((hi - lo, 1), -1, dtype=torch.long)
        ids = torch.full((hi - lo, 1), self._pad, dtype=torch.long)
        order = []  # (index in the forward, key, the token fed)
        for i, key in enumerate(self._keys_in(lo, hi)):
            if key in wanted:
                fed = self.rows[key].next_input
                ids[i, 0], positions[i, 0] = fed, self.arena.length[key]
                order.append((i, key, fed))
        logits = self._run(lo, hi, ids, positions)
        steps = self._chooser.choose(
            [self.rows[k] for _, k, _ in order], logits[[i for i, _, _ in order]]
        )
        for _, key, fed in order:  # the fed token's KV is now in the slot
            self.arena.wrote(key, [fed])
        return steps

    @_inference
    def remove(self, keys: Collection[int]) -> None:
        """Free the rows' slots and close the holes they leave among decoding rows."""
        for key in keys:
            self.arena.release(key)
            self.rows.pop(key, None)
        self.compact()

    @_inference
    def compact(self) -> None:
        """Close holes below decoding rows. Best effort: a failed move leaves its row
        intact where it was, and a forward over a range with holes is still correct
        (the holes are dummy rows), only wider."""
        decoding = [k for k, r in self.rows.items() if r.produced > 0]
        try:
            self.arena.compact(decoding)
        except Exception:
            log.exception("KV slot compaction failed; rows stay where they are")
            self.release_memory()

    @_inference
    def probe(self, key: int, token: int) -> torch.Tensor:
        """The logits after feeding ``token`` to row ``key``, its length unchanged (the
        load-time self test)."""
        lo, hi = self.arena.span([key])
        positions = torch.tensor([[self.arena.length[key]]])
        return self._run(lo, hi, torch.tensor([[token]]), positions)[0].float()

    # -- internals ---------------------------------------------------------------------
    def _keys_in(self, lo: int, hi: int) -> list[int | None]:
        """The row in each slot of ``lo:hi`` (None: a free slot, a dummy in the forward)."""
        by_slot: list[int | None] = [None] * (hi - lo)
        for key, slot in self.arena.slot_of.items():
            if lo <= slot < hi:
                by_slot[slot - lo] = key
        return by_slot

    def _run(self, lo: int, hi: int, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One forward over slots ``lo:hi``; ``positions`` -1 marks a padded query. Returns
        the last query's logits per slot."""
        arena = self.arena
        view = bucket(int(positions.max()) + 1, arena.size.tokens_per_slot)
        padded = positions < 0
        write_cols = positions.masked_fill(padded, arena.scratch_column)
        mask = self._mask(positions.to(self.device), view)
        cache = ArenaCache(arena, lo, hi, write_cols.to(self.device), view)
        out = self._forward(
            input_ids=ids.to(self.device),
            position_ids=positions.clamp(min=0).to(self.device),
            cache_position=torch.arange(ids.shape[1], device=self.device),
            attention_mask=mask,
            past_key_values=cache,
        )
        return out.logits[:, -1, :]

    def _mask(self, positions: torch.Tensor, view: int) -> torch.Tensor:
        """[B, 1, q, view] additive mask: a query sees its row's columns up to its own
        position (within the sliding window, if the model has one); a padded query sees
        column 0 only, so no row of the softmax is empty."""
        cols = torch.arange(view, device=positions.device)
        pos = positions[:, :, None]
        allowed = cols <= pos
        if self._window is not None:
            allowed &= cols > pos - self._window
        allowed |= (pos < 0) & (cols == 0)
        dtype = self._model.dtype if self._model.dtype.is_floating_point else torch.float32
        mask = torch.zeros(allowed.shape, dtype=dtype, device=positions.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


class SerialRunner(_ModelCalls):
    """One row at a time on the model's own cache: for architectures the arena cannot
    serve. The scheduler gives it one slot, so requests queue instead of batching."""

    def __init__(self, loaded: LoadedModel, reason: str, tokens_per_slot: int) -> None:
        super().__init__(loaded)
        self.info = ArenaInfo("serial", 1, tokens_per_slot, 0, reason)
        self._length: dict[int, int] = {}

    @property
    def kv_tokens_used(self) -> int:
        return sum(self._length.values())

    def add(self, specs: Sequence[RowSpec]) -> dict[int, int]:
        if len(self.rows) + len(specs) > 1:
            raise RuntimeError("the serial runner holds one row at a time")
        self._new_rows(specs)
        for spec in specs:
            self._length[spec.key] = 0
        return {spec.key: 0 for spec in specs}

    @_inference
    def prefill(self, chunks: Sequence[PrefillChunk]) -> list[Step]:
        steps = []
        for chunk in chunks:
            row = self.rows[chunk.key]
            ids = torch.tensor([row.request.input_ids[chunk.start : chunk.end]], device=self.device)
            logits = self._step(row, ids, chunk.start)
            self._length[chunk.key] = chunk.end
            if chunk.end == len(row.request.input_ids):
                steps += self._chooser.choose([row], logits)
        return steps

    @_inference
    def decode(self, keys: Collection[int]) -> list[Step]:
        steps = []
        for key in keys:
            row = self.rows[key]
            ids = torch.tensor([[row.next_input]], device=self.device)
            logits = self._step(row, ids, self._length[key])
            steps += self._chooser.choose([row], logits)
            self._length[key] += 1
        return steps

    def _step(self, row: RowState, ids: torch.Tensor, start: int) -> torch.Tensor:
        past = row.extra.get("past")
        length = start + ids.shape[1]
        out = self._forward(
            input_ids=ids,
            attention_mask=torch.ones((1, length), dtype=torch.long, device=self.device),
            position_ids=torch.arange(start, length, device=self.device)[None],
            past_key_values=past,
        )
        row.extra["past"] = out.past_key_values
        return out.logits[:, -1, :]

    def reuse(self, key: int) -> int:
        return self._length[key]  # no prefix cache: it never has a leader to wait for

    def remove(self, keys: Collection[int]) -> None:
        for key in keys:
            self.rows.pop(key, None)
            self._length.pop(key, None)

    def compact(self) -> None:
        return None


def self_test(runner: ModelRunner, loaded: LoadedModel) -> str:
    """Check the arena reproduces the model's own forward on a short prompt prefilled in
    two chunks plus one decode step; returns "" or why it does not."""
    ids = [int(i) % runner.vocab for i in range(11, 18)]
    try:
        with torch.inference_mode():
            want = loaded.model(input_ids=torch.tensor([ids], device=runner.device))
            want = want.logits[0, -1].float()
        request = GenerationRequest("self-test", tuple(ids[:-1]), False, max_new_tokens=2)
        runner.add([RowSpec(-1, request)])
        try:
            runner.prefill([PrefillChunk(-1, 0, 3)])
            runner.prefill([PrefillChunk(-1, 3, len(ids) - 1)])
            got = runner.probe(-1, ids[-1])
        finally:
            runner.remove([-1])
    except Exception as exc:  # noqa: BLE001 - any failure means: serve serially
        return f"the arena forward failed: {type(exc).__name__}: {exc}"
    error = float((got - want).abs().max()) / (float(want.abs().max()) or 1.0)
    if error > 2e-2:
        return f"the arena forward differs from the model's own by {error:.3f} (relative)"
    return ""


def build_runner(
    loaded: LoadedModel, size: ArenaSize | None, *, prefix_cache: bool = True
) -> ModelRunner | SerialRunner:
    """The arena runner when the architecture supports it, else the serial one (logged)."""
    model_type = getattr(loaded.model.config, "model_type", "")
    reason = ""
    if size is None or arena_shape(loaded.model) is None:
        reason = "the model config does not give its attention geometry"
    elif model_type in SERIAL_MODEL_TYPES:
        reason = f"{model_type} needs a cache of its own (sliding-window or recurrent layers)"
    elif not getattr(loaded.model, "_supports_cache_class", True):
        reason = f"{model_type}'s forward takes no Cache object in this transformers"
    if not reason:
        assert size is not None
        runner = ModelRunner(loaded, size, prefix_cache=prefix_cache)
        reason = self_test(runner, loaded)
        if not reason:
            return runner
        del runner
    tokens = loaded.max_context_length
    log.warning("KV arena off for %s: %s; serving one request at a time", model_type, reason)
    return SerialRunner(loaded, reason, tokens)
