"""The model side of continuous batching: one packed forward per step over the KV arena.

The scheduler decides what each step computes (a Plan, plan.py); this module computes
it in ONE model forward: the decoding rows' fed tokens and every prompt chunk's tokens
flattened into one sequence with no padding, each token at its own position (= its
column in its row's arena slot), attention per row over the arena read in place
(packed.py). The output head runs only at the positions that choose a token: every
decoding row, and a chunk's last token when it completes its prompt.

A forward that fails leaves nothing to undo: a row's length advances only after its
step succeeded, and the columns a failed forward wrote are rewritten by the retry.

Architectures the packed step cannot serve (GPT-2 and other legacy tuple caches in
transformers 4.45, sliding-window hybrids, attention that is not SDPA) are detected at
load by ``self_test`` and served by ``SerialRunner``: one request at a time on the model's own
cache, through the same token choice and streaming. Slower, never broken.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..domain import GenerationRequest
from ..kv.kv_arena import ArenaSize, KVArena, arena_shape
from ..kv.prefix_cache import BLOCK_TOKENS, PrefixIndex
from ..loading.model_loader import LoadedModel
from ..sched.plan import ArenaInfo, Plan, PrefillChunk, RowSpec, Step
from . import lora, packed
from .ngram import NgramProposer
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
    """What both runners share: the model, its rows' torch state and their token choice."""

    def __init__(self, loaded: LoadedModel) -> None:
        self._model = loaded.model
        self.device = loaded.model.device
        self.vocab = int(loaded.model.get_output_embeddings().weight.shape[0])
        self._chooser = TokenChooser(loaded.tokenizer, sorted(loaded.eos_token_ids))
        self.rows: dict[int, RowState] = {}

    def _new_rows(self, specs: Sequence[RowSpec]) -> None:
        for spec in specs:
            self.rows[spec.key] = new_row(spec.key, spec.request, self.vocab, self.device)

    def release_memory(self) -> None:
        """After an OOM, hand cached blocks back so the next step does not fragment."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@dataclass
class _Packing:
    """One step's packed sequence: its tokens and layout, and which rows choose tokens
    from which positions (``offsets[i]``: where row ``keys[i]``'s positions start in
    ``choose``; a drafting row has one per fed token)."""

    layout: packed.StepLayout
    ids: list[int]
    adapters: list[Any]  # the LoRA adapter of each token (None: the base model)
    keys: list[int]
    choose: list[int]
    offsets: list[int]

    def choose_from(self, key: int, positions: Iterable[int]) -> None:
        self.keys.append(key)
        self.offsets.append(len(self.choose))
        self.choose += positions


class ModelRunner(_ModelCalls):
    """Every step in one packed forward over the KV arena (the scheduler's Runner)."""

    def __init__(
        self,
        loaded: LoadedModel,
        size: ArenaSize,
        *,
        prefix_cache: bool = True,
        ngram: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(loaded)
        self._ngram = ngram  # (min n, max n) of the draft proposer; None: no speculation
        shape = arena_shape(loaded.model)
        assert shape is not None
        identity = f"{loaded.model_id}|{loaded.dtype}|{loaded.quantization.describe()}"
        prefix = PrefixIndex(size.slots, identity, enabled=prefix_cache)
        self.arena = KVArena(shape, size, self.device, prefix)
        model = loaded.model
        config = model.config
        window = getattr(config, "sliding_window", None)
        self._window = window if window and getattr(config, "use_sliding_window", True) else None
        self._base = model.base_model
        self._head = model.get_output_embeddings()
        self._dtype = model.dtype if model.dtype.is_floating_point else torch.float32
        packed.install(model)
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

    def flush_prefix_cache(self) -> int:
        return self.arena.flush_prefix_cache()

    def add(self, specs: Sequence[RowSpec]) -> dict[int, int]:
        """New rows take free slots (kv_arena.KVArena.assign); returns the prompt tokens
        each one's slot already holds (prefix reuse), which need no prefill."""
        cached = {}
        for spec in specs:
            request = spec.request
            cached[spec.key] = self.arena.assign(
                spec.key,
                request.input_ids,
                private=request.private,
                namespace=request.prefix_namespace,
            )
            if request.adapter is not None:
                request.adapter.running += 1
        self._new_rows(specs)
        if self._ngram is not None:
            for spec in specs:
                if spec.request.speculative:
                    self.rows[spec.key].proposer = NgramProposer(
                        spec.request.input_ids,
                        min_n=self._ngram[0],
                        max_n=self._ngram[1],
                        vocab=self.vocab,
                    )
        return cached

    @_inference
    def reuse(self, key: int) -> int:
        """The prompt tokens row ``key`` now finds cached (it waited for a prefix)."""
        request = self.rows[key].request
        return self.arena.refresh(key, request.input_ids, namespace=request.prefix_namespace)

    @_inference
    def step(self, plan: Plan) -> list[Step]:
        """One packed forward: a token for every decoding row (several for a row whose
        drafted tokens the model agrees with), the chunks' prompt tokens, and the first
        token of each row whose prompt the step completes."""
        arena = self.arena
        allowed = dict(plan.drafts)
        # Each decoding row feeds the token chosen last, then its draft (if any).
        fed = {
            key: [self.rows[key].next_input, *self._propose(key, allowed.get(key, 0))]
            for key in sorted(plan.decode, key=arena.slot_of.__getitem__)
        }
        prompts = [self.rows[c.key].request.input_ids[c.start : c.end] for c in plan.chunks]
        packing = self._pack(fed, plan.chunks, prompts)
        with lora.applying(lora.for_step(packing.adapters, self.device)):  # type: ignore[arg-type]
            logits = self._logits(packing.ids, packing.layout, packing.choose)
        steps = []
        if packing.keys:
            rows = [self.rows[k] for k in packing.keys]
            drafts = [fed[k][1:] if k in fed else () for k in packing.keys]
            steps = self._chooser.verify(rows, logits, packing.offsets, drafts)
        accepted = {s.key: s.accepted for s in steps if s.drafted}
        for (
            key,
            tokens,
        ) in fed.items():  # the fed tokens' KV is in the slots, and the agreed drafts'
            arena.wrote(key, tokens[: 1 + accepted.get(key, 0)])
        for chunk, prompt in zip(plan.chunks, prompts, strict=True):
            arena.wrote(chunk.key, prompt)
        for step in steps:
            proposer = self.rows[step.key].proposer
            if proposer is not None:
                proposer.extend((step.token_id,))
        return steps

    def _pack(
        self,
        fed: dict[int, list[int]],
        chunks: Sequence[PrefillChunk],
        prompts: Sequence[Sequence[int]],
    ) -> _Packing:
        """The step's tokens as one sequence: rows decoding one token first (attending
        together), then drafting rows and prompt chunks (each over its own slot with an
        offset-causal mask: a drafting row is laid out like a prompt chunk, one prediction
        per token); and where the logits that choose tokens are."""
        arena = self.arena
        plain = [key for key, tokens in fed.items() if len(tokens) == 1]
        drafting = [key for key, tokens in fed.items() if len(tokens) > 1]
        spans = [
            (arena.slot_of[k], arena.length[k], arena.length[k] + len(fed[k])) for k in drafting
        ]
        layout = packed.StepLayout(
            arena,
            [(arena.slot_of[key], arena.length[key]) for key in plain],
            [*spans, *((arena.slot_of[c.key], c.start, c.end) for c in chunks)],
            window=self._window,
            device=self.device,
        )
        packing = _Packing(
            layout,
            ids=[*(fed[k][0] for k in plain), *(t for k in drafting for t in fed[k])],
            adapters=[self.rows[k].request.adapter for k in [*plain, *drafting] for _ in fed[k]],
            keys=list(plain),
            choose=list(range(len(plain))),
            offsets=list(range(len(plain))),
        )
        for key, span in zip(drafting, layout.chunks[: len(drafting)], strict=True):
            packing.choose_from(key, range(span.offset, span.offset + span.count))
        for chunk, prompt, span in zip(
            chunks, prompts, layout.chunks[len(drafting) :], strict=True
        ):
            packing.ids += prompt
            packing.adapters += [self.rows[chunk.key].request.adapter] * len(prompt)
            if chunk.end == len(self.rows[chunk.key].request.input_ids):
                packing.choose_from(chunk.key, [span.offset + span.count - 1])
        return packing

    def _propose(self, key: int, limit: int) -> list[int]:
        """Row ``key``'s draft: at most ``limit`` tokens, and never past its slot."""
        row = self.rows[key]
        if row.proposer is None:
            return []
        room = self.arena.size.tokens_per_slot - self.arena.length[key] - 1
        return row.proposer.propose(min(limit, room))

    def remove(self, keys: Collection[int]) -> None:
        """Free the rows' slots; their columns stay as a prefix cache (no row is moved
        into them: the packed step reads any set of slots in place)."""
        for key in keys:
            self.arena.release(key)
            row = self.rows.pop(key, None)
            if row is not None and row.request.adapter is not None:
                row.request.adapter.running -= 1

    @_inference
    def probe(self, key: int, token: int) -> torch.Tensor:
        """The logits after feeding ``token`` to row ``key``, its length unchanged (the
        load-time self test)."""
        slot = self.arena.slot_of[key]
        layout = packed.StepLayout(
            self.arena,
            [(slot, self.arena.length[key])],
            [],
            window=self._window,
            device=self.device,
        )
        return self._logits([token], layout, [0])[0].float()

    def _logits(self, ids: list[int], layout: packed.StepLayout, choose: list[int]) -> torch.Tensor:
        """The packed forward: the base model over the step's tokens as one sequence,
        then the output head at the ``choose`` positions only."""
        tokens = len(ids)
        device = self.device
        out = self._base(
            input_ids=torch.tensor([ids], dtype=torch.long, device=device),
            position_ids=layout.positions[None],
            cache_position=torch.arange(tokens, device=device),
            # A 4D mask is taken as given (no causal mask is built); attend ignores it.
            attention_mask=torch.zeros((1, 1, tokens, 1), dtype=self._dtype, device=device),
            past_key_values=packed.StepCache(layout),
            use_cache=True,
        )
        if layout.layer >= 0:
            raise RuntimeError("the last layer's attention did not reach the packed step")
        hidden = out[0][0]
        if not choose:
            return hidden.new_empty((0, self.vocab))
        return self._head(hidden[torch.tensor(choose, device=device)])


class SerialRunner(_ModelCalls):
    """One row at a time on the model's own cache: for architectures the arena cannot
    serve. The scheduler gives it one slot, so requests queue instead of batching."""

    def __init__(self, loaded: LoadedModel, reason: str, tokens_per_slot: int) -> None:
        super().__init__(loaded)
        self.info = ArenaInfo("serial", 1, tokens_per_slot, 0, reason)
        self._length: dict[int, int] = {}
        params = inspect.signature(self._model.forward).parameters
        self._keep_arg = next(
            (n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None
        )

    @property
    def kv_tokens_used(self) -> int:
        return sum(self._length.values())

    def flush_prefix_cache(self) -> int:
        return 0  # no prefix cache on the model's own cache

    def add(self, specs: Sequence[RowSpec]) -> dict[int, int]:
        if len(self.rows) + len(specs) > 1:
            raise RuntimeError("the serial runner holds one row at a time")
        self._new_rows(specs)
        for spec in specs:
            self._length[spec.key] = 0
        return {spec.key: 0 for spec in specs}

    @_inference
    def step(self, plan: Plan) -> list[Step]:
        """The plan's work as the model's own forwards (one row: at most one of each)."""
        steps = []
        for chunk in plan.chunks:
            row = self.rows[chunk.key]
            ids = torch.tensor([row.request.input_ids[chunk.start : chunk.end]], device=self.device)
            logits = self._step(row, ids, chunk.start)
            self._length[chunk.key] = chunk.end
            if chunk.end == len(row.request.input_ids):
                steps += self._chooser.choose([row], logits)
        for key in plan.decode:
            row = self.rows[key]
            ids = torch.tensor([[row.next_input]], device=self.device)
            logits = self._step(row, ids, self._length[key])
            steps += self._chooser.choose([row], logits)
            self._length[key] += 1
        return steps

    def _forward(self, **kwargs: Any) -> Any:
        if self._keep_arg is not None:
            kwargs[self._keep_arg] = 1
        return self._model(use_cache=True, **kwargs)

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


def self_test(runner: ModelRunner, loaded: LoadedModel) -> str:
    """Check the packed step reproduces the model's own forward: two rows, one prompt
    prefilled in two chunks (the second beside the other row's whole prompt, in one
    forward), then a decode step of both; returns "" or why it does not."""
    first = [int(i) % runner.vocab for i in range(11, 18)]
    second = [int(i) % runner.vocab for i in range(40, 45)]
    try:
        with torch.inference_mode():
            want = [
                loaded.model(input_ids=torch.tensor([ids], device=runner.device)).logits[0, -1]
                for ids in (first, second)
            ]
        requests = [
            GenerationRequest("self-test", tuple(ids[:-1]), False, max_new_tokens=2)
            for ids in (first, second)
        ]
        runner.add([RowSpec(-1, requests[0]), RowSpec(-2, requests[1])])
        try:
            runner.step(Plan(chunks=(PrefillChunk(-1, 0, 3),)))
            runner.step(Plan(chunks=(PrefillChunk(-1, 3, 6), PrefillChunk(-2, 0, 4))))
            got = [runner.probe(-1, first[-1]), runner.probe(-2, second[-1])]
        finally:
            runner.remove([-1, -2])
    except Exception as exc:  # noqa: BLE001 - any failure means: serve serially
        return f"the packed forward failed: {type(exc).__name__}: {exc}"
    for g, w in zip(got, want, strict=True):
        w = w.float()
        error = float((g - w).abs().max()) / (float(w.abs().max()) or 1.0)
        if error > 2e-2:
            return f"the packed forward differs from the model's own by {error:.3f} (relative)"
    return ""


def build_runner(
    loaded: LoadedModel,
    size: ArenaSize | None,
    *,
    prefix_cache: bool = True,
    ngram: tuple[int, int] | None = None,
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
        runner = ModelRunner(loaded, size, prefix_cache=prefix_cache, ngram=ngram)
        reason = self_test(runner, loaded)
        if not reason:
            return runner
        del runner
    tokens = loaded.max_context_length
    log.warning("KV arena off for %s: %s; serving one request at a time", model_type, reason)
    return SerialRunner(loaded, reason, tokens)
