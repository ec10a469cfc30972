"""The model side of continuous batching: one left-padded KV cache for all running rows.

The scheduler (scheduler.py) decides who runs; this module owns the tensors. Its shape
follows TGI's ``CausalLMBatch`` for plain Hugging Face models: every running row lives
in one left-padded ``past_key_values``; a new group of prompts is prefilled on its own
cache (in chunks of at most ``max_prefill_tokens`` per step, so running streams keep
decoding while a long prompt joins) and then concatenated in; a finished row is cut
out at once and the all-padding columns it leaves on the left are trimmed.

Per-row logits work (repetition penalty, min_new_tokens, temperature / top-k / top-p,
a ``torch.Generator`` per sampling row, logprobs) is done here for each row on its own,
so a request decodes the same alone or in a busy batch. The order matches
transformers' ``generate``: processors (penalty, min tokens), then the logprobs that
token details report, then the sampling warpers.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from .constraints import ConstraintState
from .domain import GenerationRequest, InvalidConstraint, TokenDetail
from .model_loader import LoadedModel
from .scheduler import RowSpec, Step
from .token_details import token_detail

log = logging.getLogger(__name__)


@dataclass
class _Row:
    """Torch-side state of one request."""

    key: int
    request: GenerationRequest
    seen: set[int]  # prompt + generated ids, for the repetition penalty
    generator: torch.Generator | None
    constraint: ConstraintState | None = None
    produced: int = 0
    failure: Exception | None = None  # set when the constraint can no longer be followed


@dataclass
class _Batch:
    """Rows that share one left-padded KV cache; ``mask`` covers what the cache holds."""

    rows: list[_Row]
    cache: Any
    mask: torch.Tensor  # [B, T] long, 0 = left padding
    next_input: torch.Tensor | None = None  # [B, 1] the tokens chosen last step


@dataclass
class _Prefill:
    """A group of new prompts being prefilled, ``done`` columns so far."""

    rows: list[_Row]
    ids: torch.Tensor  # [G, L] left-padded prompts
    mask: torch.Tensor  # [G, L]
    positions: torch.Tensor  # [G, L]
    cache: Any = field(default_factory=DynamicCache)
    done: int = 0


def _inference(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a runner method under inference_mode: its tensors (cache, logits) are
    inference tensors, which may only be updated in place inside it; and no autograd
    bookkeeping per op, a sizeable share of a small model's step."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            return method(*args, **kwargs)

    return wrapper


def _layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def _cache(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    return DynamicCache.from_legacy_cache(tuple(layers))


def _left_pad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class ModelRunner:
    """Prefill, decode step and row removal over one model (the scheduler's Runner)."""

    def __init__(self, loaded: LoadedModel, *, max_prefill_tokens: int) -> None:
        self._model = loaded.model
        self._tokenizer = loaded.tokenizer
        self._device = loaded.model.device
        self._eos = sorted(loaded.eos_token_ids)
        pad = loaded.tokenizer.pad_token_id
        self._pad = pad if pad is not None else next(iter(self._eos), 0)
        self._max_prefill_tokens = max(1, max_prefill_tokens)
        self._batch: _Batch | None = None
        self._prefill: _Prefill | None = None
        params = inspect.signature(self._model.forward).parameters
        self._keep_arg = next(
            (n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None
        )

    # -- the Runner interface ----------------------------------------------------------
    @property
    def prefilling(self) -> bool:
        return self._prefill is not None

    @_inference
    def begin_prefill(self, specs: Sequence[RowSpec]) -> None:
        rows = [self._new_row(spec) for spec in specs]
        length = max(len(r.request.input_ids) for r in rows)
        ids = torch.full((len(rows), length), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            prompt = row.request.input_ids
            ids[i, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, length - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self._prefill = _Prefill(
            rows, ids.to(self._device), mask.to(self._device), positions.to(self._device)
        )

    @_inference
    def prefill_step(self, chunked: bool = True) -> list[Step] | None:
        """Run one chunk of the group's prompts; the first tokens once all are read.

        ``chunked``: at most ``max_prefill_tokens`` (over the group) this step, because
        running rows are waiting to decode; otherwise the whole prompts in one pass, the
        quickest way to the group's first tokens.
        """
        p = self._prefill
        assert p is not None
        width = max(1, self._max_prefill_tokens // len(p.rows)) if chunked else p.ids.shape[1]
        start, end = p.done, min(p.done + width, p.ids.shape[1])
        out = self._forward(
            p.ids[:, start:end], p.mask[:, :end], p.positions[:, start:end], p.cache
        )
        p.cache, p.done = out.past_key_values, end
        if end < p.ids.shape[1]:
            return None
        steps, chosen = self._choose(p.rows, out.logits[:, -1, :])
        self._prefill = None
        self._merge(_Batch(p.rows, p.cache, p.mask, chosen))
        return steps

    @_inference
    def decode_step(self) -> list[Step]:
        """One forward pass over every running row: the next token of each."""
        b = self._batch
        assert b is not None and b.next_input is not None
        length = b.mask.shape[1]
        positions = b.mask.sum(-1, keepdim=True)
        mask = torch.cat([b.mask, b.mask.new_ones((len(b.rows), 1))], dim=-1)
        try:
            out = self._forward(b.next_input, mask, positions, b.cache)
        except BaseException:
            self._rollback(b, length)  # layers before the failure already grew by one
            raise
        b.cache, b.mask = out.past_key_values, mask
        steps, b.next_input = self._choose(b.rows, out.logits[:, -1, :])
        return steps

    @_inference
    def remove(self, keys: Collection[int]) -> None:
        """Drop rows (finished, cancelled, failed) from the batch or the prefill group."""
        if not keys:
            return
        p = self._prefill
        if p is not None and any(r.key in keys for r in p.rows):
            keep = [i for i, r in enumerate(p.rows) if r.key not in keys]
            if not keep:
                self._prefill = None
            elif p.done == 0:
                self.begin_prefill([RowSpec(p.rows[i].key, p.rows[i].request) for i in keep])
            else:
                idx = torch.tensor(keep, device=self._device)
                layers = [(k[idx], v[idx]) for k, v in _layers(p.cache)]
                p.rows = [p.rows[i] for i in keep]
                p.ids, p.mask, p.positions = p.ids[idx], p.mask[idx], p.positions[idx]
                p.cache = _cache(layers)
        b = self._batch
        if b is not None and any(r.key in keys for r in b.rows):
            keep = [i for i, r in enumerate(b.rows) if r.key not in keys]
            if not keep:
                self._batch = None
                return
            idx = torch.tensor(keep, device=self._device)
            mask = b.mask[idx]
            first = int(mask.any(0).nonzero()[0]) if mask.numel() else 0
            layers = [(k[idx, :, first:], v[idx, :, first:]) for k, v in _layers(b.cache)]
            assert b.next_input is not None
            self._batch = _Batch(
                [b.rows[i] for i in keep], _cache(layers), mask[:, first:], b.next_input[idx]
            )

    def release_memory(self) -> None:
        """After an OOM, hand cached blocks back so the next step does not fragment."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- internals ---------------------------------------------------------------------
    def _new_row(self, spec: RowSpec) -> _Row:
        request = spec.request
        generator = None
        if not request.sampling.greedy:
            generator = torch.Generator(device=self._device)
            generator.manual_seed(request.sampling.seed)
        constraint = request.constraint.start() if request.constraint is not None else None
        return _Row(spec.key, request, set(request.input_ids), generator, constraint)

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> Any:
        kwargs: dict[str, Any] = {}
        if self._keep_arg is not None:
            kwargs[self._keep_arg] = 1
        return self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            **kwargs,
        )

    def _merge(self, group: _Batch) -> None:
        b = self._batch
        if b is None:
            self._batch = group
            return
        length = max(b.mask.shape[1], group.mask.shape[1])
        pad_b, pad_g = length - b.mask.shape[1], length - group.mask.shape[1]
        layers = [
            (
                torch.cat([_left_pad(kb, pad_b, 2), _left_pad(kg, pad_g, 2)]),
                torch.cat([_left_pad(vb, pad_b, 2), _left_pad(vg, pad_g, 2)]),
            )
            for (kb, vb), (kg, vg) in zip(_layers(b.cache), _layers(group.cache), strict=True)
        ]
        assert b.next_input is not None and group.next_input is not None
        self._batch = _Batch(
            b.rows + group.rows,
            _cache(layers),
            torch.cat([_left_pad(b.mask, pad_b, 1), _left_pad(group.mask, pad_g, 1)]),
            torch.cat([b.next_input, group.next_input]),
        )

    def _rollback(self, b: _Batch, length: int) -> None:
        layers = _layers(b.cache)
        if any(k.shape[2] != length for k, _ in layers):
            b.cache = _cache([(k[:, :, :length], v[:, :, :length]) for k, v in layers])

    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> tuple[list[Step], torch.Tensor]:
        """The next token of every row, each under its own request's parameters."""
        scores = logits.float()
        for i, row in enumerate(rows):
            self._process(row, scores, i)
        tokens = scores.argmax(-1)
        logprobs: dict[int, torch.Tensor] = {}
        for i, row in enumerate(rows):
            if row.request.token_details:  # before sampling reshapes the scores
                logprobs[i] = torch.log_softmax(scores[i], dim=-1)
            if row.generator is not None:
                tokens[i] = _sample(scores[i], row.request, row.generator)
        steps = []
        for i, (row, token_id) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            row.produced += 1
            row.seen.add(token_id)
            detail: TokenDetail | None = None
            if i in logprobs:
                detail = token_detail(
                    self._tokenizer, logprobs[i], token_id, row.request.top_n_tokens
                )
            steps.append(self._step(row, token_id, detail))
        return steps, tokens.unsqueeze(-1)

    def _step(self, row: _Row, token_id: int, detail: TokenDetail | None) -> Step:
        """The row's Step; a constrained row's grammar advances by the chosen token."""
        if row.constraint is None:
            return Step(row.key, token_id, detail)
        if row.failure is None:
            try:
                row.constraint.advance(token_id)
            except InvalidConstraint as exc:
                row.failure = exc
        if row.failure is not None:
            return Step(row.key, token_id, failure=row.failure)
        return Step(row.key, token_id, detail, final=row.constraint.finished)

    def _process(self, row: _Row, scores: torch.Tensor, i: int) -> None:
        """transformers' logits processors for one row: penalty, min_new_tokens, then the
        constraint's mask (so token details report the distribution actually drawn from)."""
        request = row.request
        penalty = request.sampling.repetition_penalty
        if penalty != 1.0:
            seen = torch.tensor(sorted(row.seen), device=scores.device)
            values = scores[i, seen]
            scores[i, seen] = torch.where(values < 0, values * penalty, values / penalty)
        # A complete constrained output may end before min_new_tokens: nothing else fits.
        too_early = row.produced < request.min_new_tokens and not request.ignore_eos
        if too_early and self._eos and not (row.constraint and row.constraint.accepting):
            scores[i, self._eos] = float("-inf")
        if row.constraint is not None:
            self._mask(row, scores[i])

    def _mask(self, row: _Row, scores: torch.Tensor) -> None:
        """Forbid every token that would break the row's constraint."""
        assert row.constraint is not None
        allowed = torch.frombuffer(bytearray(row.constraint.allowed()), dtype=torch.uint8)
        forbidden = torch.ones(scores.shape[-1], dtype=torch.bool)
        width = min(len(allowed), scores.shape[-1])
        forbidden[:width] = allowed[:width] == 0
        if row.request.ignore_eos and self._eos:
            eos = forbidden[self._eos].clone()
            forbidden[self._eos] = True
            if bool(forbidden.all()):  # EOS is the only way on: let it end the output
                forbidden[self._eos] = eos
        if bool(forbidden.all()):  # the grammar engine hit a limit: nothing can follow
            row.failure = InvalidConstraint(
                row.constraint.kind.value, f"the grammar engine stopped: {row.constraint.error}"
            )
            return
        scores.masked_fill_(forbidden.to(scores.device), float("-inf"))


def _sample(scores: torch.Tensor, request: GenerationRequest, generator: torch.Generator) -> int:
    """Temperature, top-k, top-p (transformers' warper order), then a draw from the row's
    own generator, so the same seed gives the same text whatever else is batched."""
    sampling = request.sampling
    scores = scores / sampling.temperature
    if sampling.top_k and sampling.top_k < scores.shape[-1]:
        kth = torch.topk(scores, sampling.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(scores)
        cumulative = ordered.softmax(-1).cumsum(-1)
        remove = cumulative <= 1 - sampling.top_p
        remove[-1] = False  # always keep the most likely token
        scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
