"""Token choice for a whole batch at once: each row under its own request's parameters.

transformers' order, applied as tensor operations over the batch: the logits processors
(repetition penalty, min_new_tokens, the structured-output mask), then the logprobs that
token details report, then the sampling warpers (temperature, top-k, top-p) and one draw
per sampling row from that row's own ``torch.Generator``, so a seed gives the same text
alone or in a busy batch. The chosen tokens cross to the host in one transfer per step;
only rows that asked for token details pay for more.

The draw is one uniform number per token, mapped through the distribution's cumulative
sum (inverse transform sampling). That makes speculative decoding exact twice over: a
drafted token is accepted when the draw lands on it (probability p(token), the standard
rejection rule for a deterministic draft, and on rejection the token drawn is one from
the residual distribution), and since a row consumes one number per output token
whether or not a draft was proposed, a seed gives the same text with speculation on or
off (``verify``).

A failure (an out-of-memory in the middle of a step, say) must not change what the
survivors generate when the step is retried: the generators' states are restored and
no row's state is touched before every token is chosen.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..domain import GenerationRequest, InvalidConstraint, TokenDetail
from ..sched.plan import Step
from .constraints import ConstraintState
from .ngram import NgramProposer
from .token_details import token_detail


@dataclass
class RowState:
    """The torch side of one request: what token choice remembers between steps."""

    key: int
    request: GenerationRequest
    seen: torch.Tensor  # [vocab] bool: prompt + generated ids (repetition penalty)
    generator: torch.Generator | None
    constraint: ConstraintState | None = None
    produced: int = 0
    failure: Exception | None = None  # set when the constraint can no longer be followed
    next_input: int = -1  # the token chosen last, fed to the next decode step
    extra: dict[str, Any] = field(default_factory=dict)  # runner-specific (serial cache)
    proposer: NgramProposer | None = None  # its drafts, when it may speculate


def new_row(key: int, request: GenerationRequest, vocab: int, device: torch.device) -> RowState:
    generator = None
    if not request.sampling.greedy:
        generator = torch.Generator(device=device)
        generator.manual_seed(request.sampling.seed)
    seen = torch.zeros(vocab, dtype=torch.bool, device=device)
    prompt = [i for i in request.input_ids if 0 <= i < vocab]
    if prompt:
        seen[torch.tensor(prompt, device=device)] = True
    constraint = request.constraint.start() if request.constraint is not None else None
    return RowState(key, request, seen, generator, constraint)


class _Snapshot:
    """A drafting row's state before ``verify``: a failure halfway through the positions
    (after some were chosen) puts the row back, so the retried step chooses the same."""

    def __init__(self, row: RowState) -> None:
        self.generator = row.generator.get_state() if row.generator is not None else None
        self.seen = row.seen.clone()
        self.produced, self.next_input, self.failure = row.produced, row.next_input, row.failure

    def restore(self, row: RowState, *, advanced: int) -> None:
        if row.generator is not None and self.generator is not None:
            row.generator.set_state(self.generator)
        row.seen.copy_(self.seen)
        row.produced, row.next_input, row.failure = self.produced, self.next_input, self.failure
        if row.constraint is not None and advanced:
            row.constraint.rollback(advanced)


class TokenChooser:
    """Chooses the next token of every row of a step (the runner's last phase)."""

    def __init__(self, tokenizer: Any, eos_token_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._eos = sorted(eos_token_ids)
        self._eos_set = frozenset(self._eos)

    def choose(self, rows: Sequence[RowState], logits: torch.Tensor) -> list[Step]:
        """``logits``: [len(rows), vocab], row i for rows[i]. Rows' states advance only
        when every row's token is known."""
        generators = [r.generator for r in rows if r.generator is not None]
        saved = [g.get_state() for g in generators]
        try:
            scores = self._process(rows, logits.float())
            details = self._logprobs(rows, scores)
            tokens = self._pick(rows, scores).tolist()  # the step's one host transfer
        except BaseException:
            for g, state in zip(generators, saved, strict=True):
                g.set_state(state)
            raise
        return [
            self._advance(r, t, details.get(i))
            for i, (r, t) in enumerate(zip(rows, tokens, strict=True))
        ]

    def verify(
        self,
        rows: Sequence[RowState],
        logits: torch.Tensor,
        offsets: Sequence[int],
        drafts: Sequence[Sequence[int]],
    ) -> list[Step]:
        """Token choice for a step in which some rows proposed draft tokens: rows[i]'s
        logits are ``logits[offsets[i] : offsets[i] + len(drafts[i]) + 1]``, the model's
        prediction after the fed token and after each drafted one. Position by position,
        each row chooses exactly as ``choose`` would without speculation (the same
        processors on the same state, the same draw); while the chosen token is the
        drafted one, the next position's prediction is valid and the row goes on; the
        first disagreement (or the end of the draft) gives the row's last token. So
        greedy text is what decoding one token a step gives, and sampled text too, for
        the same seed. Returns the Steps in order, each row's in sequence; a row's first
        Step says how many tokens it drafted and how many were accepted."""
        snapshots = {i: _Snapshot(rows[i]) for i, draft in enumerate(drafts) if draft}
        if not snapshots:  # nobody drafted: one position per row, in order
            return self.choose(rows, logits)
        chosen: list[list[Step]] = [[] for _ in rows]
        alive = list(range(len(rows)))
        try:
            for position in itertools.count():
                where = torch.tensor([offsets[i] + position for i in alive], device=logits.device)
                steps = self.choose([rows[i] for i in alive], logits[where])
                going = []
                for i, step in zip(alive, steps, strict=True):
                    chosen[i].append(step)
                    if position < len(drafts[i]) and self._continues(
                        rows[i], step, drafts[i][position]
                    ):
                        going.append(i)
                if not going:
                    break
                alive = going
        except BaseException:
            for i, snapshot in snapshots.items():
                snapshot.restore(rows[i], advanced=sum(s.failure is None for s in chosen[i]))
            raise
        out = []
        for row_steps, draft in zip(chosen, drafts, strict=True):
            if draft:
                first = row_steps[0]
                row_steps[0] = dataclasses.replace(
                    first, drafted=len(draft), accepted=len(row_steps) - 1
                )
            out += row_steps
        return out

    def _continues(self, row: RowState, step: Step, drafted: int) -> bool:
        """Whether the row's next position was computed on the right token: the draft
        agreed and the row can go on (not ended by EOS, its constraint or a failure)."""
        if step.token_id != drafted or step.final or step.failure is not None:
            return False
        return row.request.ignore_eos or step.token_id not in self._eos_set

    # -- processors ----------------------------------------------------------------------
    def _process(self, rows: Sequence[RowState], scores: torch.Tensor) -> torch.Tensor:
        device = scores.device
        penalised = [i for i, r in enumerate(rows) if r.request.sampling.repetition_penalty != 1.0]
        if penalised:
            idx = torch.tensor(penalised, device=device)
            seen = torch.stack([rows[i].seen for i in penalised])
            penalty = torch.tensor(
                [rows[i].request.sampling.repetition_penalty for i in penalised],
                device=device,
                dtype=scores.dtype,
            )[:, None]
            values = scores[idx]
            hit = torch.where(values < 0, values * penalty, values / penalty)
            scores[idx] = torch.where(seen, hit, values)
        if self._eos:
            # A complete constrained output may end before min_new_tokens: nothing else fits.
            early = [
                i
                for i, r in enumerate(rows)
                if r.produced < r.request.min_new_tokens
                and not r.request.ignore_eos
                and not (r.constraint is not None and r.constraint.accepting)
            ]
            if early:
                rows_idx = torch.tensor(early, device=device)[:, None]
                scores[rows_idx, torch.tensor(self._eos, device=device)] = float("-inf")
        for i, r in enumerate(rows):  # stop token ids wait for min_new_tokens too (as vLLM)
            if r.request.stop_token_ids and r.produced < r.request.min_new_tokens:
                stops = torch.tensor(sorted(r.request.stop_token_ids), device=device)
                scores[i, stops[stops < scores.shape[-1]]] = float("-inf")
        constrained = [i for i, r in enumerate(rows) if r.constraint is not None]
        if constrained:
            forbidden = torch.stack(
                [self._forbidden(rows[i], scores.shape[-1]) for i in constrained]
            )
            idx = torch.tensor(constrained, device=device)
            scores[idx] = scores[idx].masked_fill(forbidden.to(device), float("-inf"))
        return scores

    def _forbidden(self, row: RowState, vocab: int) -> torch.Tensor:
        """The tokens that would break the row's constraint (built on the host)."""
        assert row.constraint is not None
        allowed = torch.frombuffer(bytearray(row.constraint.allowed()), dtype=torch.uint8)
        forbidden = torch.ones(vocab, dtype=torch.bool)
        width = min(len(allowed), vocab)
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
            forbidden[:] = False  # the row ends with its failure; keep its scores finite
        return forbidden

    def _logprobs(self, rows: Sequence[RowState], scores: torch.Tensor) -> dict[int, Any]:
        """Before the warpers reshape the scores: the distribution the model gave."""
        wanted = [i for i, r in enumerate(rows) if r.request.token_details]
        if not wanted:
            return {}
        logprobs = torch.log_softmax(scores[torch.tensor(wanted, device=scores.device)], dim=-1)
        return dict(zip(wanted, logprobs, strict=True))

    # -- warpers and the draw ------------------------------------------------------------
    def _pick(self, rows: Sequence[RowState], scores: torch.Tensor) -> torch.Tensor:
        tokens = scores.argmax(-1)
        sampled = [i for i, r in enumerate(rows) if r.generator is not None]
        if not sampled:
            return tokens
        device = scores.device
        idx = torch.tensor(sampled, device=device)
        params = [rows[i].request.sampling for i in sampled]
        temperature = torch.tensor([p.temperature for p in params], device=device)[:, None]
        warped = scores[idx] / temperature
        vocab = warped.shape[-1]
        if any(0 < p.top_k < vocab for p in params):
            top_k = torch.tensor(
                [p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=device
            )
            ordered = torch.sort(warped, dim=-1, descending=True).values
            kth = ordered.gather(1, (top_k - 1)[:, None])
            warped = warped.masked_fill(warped < kth, float("-inf"))
        if any(p.top_p < 1.0 for p in params):
            top_p = torch.tensor([p.top_p for p in params], device=device)[:, None]
            ordered, order = torch.sort(warped, dim=-1)
            remove = ordered.softmax(-1).cumsum(-1) <= 1 - top_p
            remove[:, -1] = False  # always keep the most likely token
            warped = warped.masked_fill(remove.scatter(1, order, remove), float("-inf"))
        cumulative = torch.softmax(warped, dim=-1).cumsum(-1)
        uniform = torch.cat(
            [torch.rand(1, generator=rows[i].generator, device=device) for i in sampled]
        )
        total = cumulative[:, -1:]
        # strictly below the total, so the draw never lands past the last likely token
        at = torch.minimum(
            uniform[:, None] * total, torch.nextafter(total, torch.zeros_like(total))
        )
        drawn = torch.searchsorted(cumulative, at, right=True)[:, 0].clamp_(max=vocab - 1)
        tokens[idx] = drawn
        return tokens

    # -- after the choice ------------------------------------------------------------------
    def _advance(self, row: RowState, token_id: int, logprobs: Any) -> Step:
        row.produced += 1
        row.next_input = token_id
        if 0 <= token_id < row.seen.shape[0]:
            row.seen[token_id] = True
        detail: TokenDetail | None = None
        if logprobs is not None:
            detail = token_detail(self._tokenizer, logprobs, token_id, row.request.top_n_tokens)
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
