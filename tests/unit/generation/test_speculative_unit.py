"""Speculative decoding's parts without a model: the n-gram proposer, the draft policy,
verification in token choice, and the scheduler's delivery of several tokens a step.

The end-to-end guarantees (greedy and seeded text identical with speculation on and
off, on real models) are in test_speculative.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence

import pytest
import torch
from support import wait_until
from zopilot_server.generation.domain import FinishReason, GenerationRequest, SamplingParams
from zopilot_server.generation.model.ngram import NgramProposer
from zopilot_server.generation.model.sampling import TokenChooser, new_row
from zopilot_server.generation.sched.plan import ArenaInfo, Plan, RowSpec, Step
from zopilot_server.generation.sched.record import RequestRecord
from zopilot_server.generation.sched.scheduler import BatchLimits, Scheduler
from zopilot_server.generation.sched.speculation import (
    PROBE_EVERY,
    DraftPolicy,
    DraftRow,
    DraftStats,
)

# -- the proposer ------------------------------------------------------------------------


def _proposer(tokens: Sequence[int], min_n: int = 2, max_n: int = 4) -> NgramProposer:
    return NgramProposer(tokens, min_n=min_n, max_n=max_n, vocab=1000)


def test_the_tokens_that_followed_the_suffix_earlier_are_proposed() -> None:
    p = _proposer([5, 6, 7, 8, 9, 1, 2, 5, 6])
    assert p.propose(3) == [7, 8, 9]
    assert p.propose(10) == [7, 8, 9, 1, 2, 5, 6]  # up to the row's end, no further
    assert p.propose(0) == []


def test_no_earlier_occurrence_no_draft_and_the_suffix_never_matches_itself() -> None:
    assert _proposer([1, 2, 3, 4, 5]).propose(4) == []
    assert _proposer([1, 2]).propose(4) == []  # the only (1, 2) is the suffix itself


def test_the_longest_suffix_wins_over_a_more_recent_shorter_one() -> None:
    # (3, 4) last occurred before 99; (2, 3, 4) only before 50: the longer one predicts.
    p = _proposer([2, 3, 4, 50, 0, 3, 4, 99, 2, 3, 4])
    assert p.propose(1) == [50]
    # Among equally long matches, the latest occurrence (the text being copied now).
    p = _proposer([7, 8, 1, 7, 8, 2, 7, 8])
    assert p.propose(1) == [2]


def test_the_index_follows_the_text_as_tokens_arrive() -> None:
    p = _proposer([1, 2, 3, 4], min_n=1, max_n=2)
    assert p.propose(2) == []
    p.extend([1])  # (1,) occurred before 2
    assert p.propose(2) == [2, 3]
    p.extend([9, 1])  # now (9, 1) is new, (1,) last followed by 9
    assert p.propose(1) == [9]
    assert len(p) == 7


def test_ids_outside_the_vocabulary_end_a_draft() -> None:
    p = NgramProposer([1, 2, 3, 5000, 4, 1, 2], min_n=2, max_n=2, vocab=1000)
    assert p.propose(4) == [3]


@pytest.mark.parametrize(("min_n", "max_n"), [(0, 2), (3, 2)])
def test_n_gram_sizes_are_checked(min_n: int, max_n: int) -> None:
    with pytest.raises(ValueError, match="min_n"):
        NgramProposer([], min_n=min_n, max_n=max_n, vocab=10)


# -- the draft policy ----------------------------------------------------------------------


def _rows(n: int, rate_hits: int = 0, tokens_left: int = 100) -> list[DraftRow]:
    rows = []
    for key in range(n):
        stats = DraftStats()
        for _ in range(rate_hits):
            stats.verified(4, 4)
        rows.append(DraftRow(key, stats, tokens_left))
    return rows


def _measured_policy(max_tokens: int = 8) -> DraftPolicy:
    policy = DraftPolicy(max_tokens)
    policy.stepped(0)  # a pure decode step measured decode_s
    return policy


def test_no_drafts_until_a_pure_decode_step_was_measured() -> None:
    policy = DraftPolicy(8)
    assert policy.allowances(_rows(1), decode_s=None, token_s=None, budget=64) == ()
    assert policy.allowances(_rows(1), decode_s=0.1, token_s=0.003, budget=64) == ()
    policy.stepped(0)
    assert policy.allowances(_rows(1), decode_s=0.1, token_s=0.003, budget=64) == ((0, 8),)


def test_every_probe_interval_one_step_goes_without_drafts() -> None:
    policy = _measured_policy()
    for _ in range(PROBE_EVERY):
        assert policy.allowances(_rows(1), decode_s=0.1, token_s=0.003, budget=64)
        policy.stepped(5)
    assert policy.allowances(_rows(1), decode_s=0.1, token_s=0.003, budget=64) == ()


def test_drafts_shrink_as_the_batch_grows_and_as_rows_get_rejected() -> None:
    policy = _measured_policy(max_tokens=16)

    def lengths(rows: list[DraftRow]) -> list[int]:
        got = dict(policy.allowances(rows, decode_s=0.1, token_s=0.004, budget=1000))
        return [got.get(r.key, 0) for r in rows]

    alone, crowd = lengths(_rows(1))[0], lengths(_rows(16))[0]
    assert alone > crowd > 0  # the same acceptance is worth fewer drafts in a big batch
    rows = _rows(16)
    for _ in range(20):
        rows[0].stats.verified(4, 0)
    assert rows[0].stats.rate < 0.15
    got = lengths(rows)
    assert got[0] == 0 and got[1] == crowd  # the rejected row stops; the others go on
    # A row whose drafts always land drafts the most the flag allows.
    assert lengths(_rows(1, rate_hits=10)) == [16]


def test_a_row_that_stopped_drafting_gets_to_try_again() -> None:
    policy = _measured_policy()
    rows = _rows(16)  # a batch where a draft token must be likely to pay
    for _ in range(20):
        rows[0].stats.verified(4, 0)
    tries = 0
    while 0 not in dict(policy.allowances(rows, decode_s=0.1, token_s=0.004, budget=64)):
        tries += 1
        assert tries < 500, "the row never drafts again"
    assert tries > 5


def test_allowances_respect_the_budget_the_flag_and_tokens_left() -> None:
    policy = _measured_policy(max_tokens=6)
    got = policy.allowances(_rows(3, rate_hits=10), decode_s=0.1, token_s=0.0, budget=10)
    assert sum(n for _, n in got) == 10 and all(n <= 6 for _, n in got)
    # A row with 3 tokens left drafts at most 2: the model's own token completes it.
    got = policy.allowances(_rows(1, tokens_left=3), decode_s=0.1, token_s=0.0, budget=64)
    assert got == ((0, 2),)
    assert DraftPolicy(0).allowances(_rows(2), decode_s=0.1, token_s=0.0, budget=64) == ()


def test_draft_stats_estimate_the_per_token_rate() -> None:
    stats = DraftStats()
    for _ in range(30):
        stats.verified(4, 1)  # one accepted, the second rejected: rate 1/2
    assert stats.rate == pytest.approx(0.5, abs=0.05)


# -- verification in token choice -----------------------------------------------------------

VOCAB = 8
EOS = 7


def _row(key: int = 0, *, temperature: float = 0.0, seed: int = 0, **sampling):
    params = SamplingParams(temperature, seed=seed, **sampling)
    request = GenerationRequest("r", (1, 2), False, max_new_tokens=16, sampling=params)
    return new_row(key, request, VOCAB, torch.device("cpu"))


def _peaked(*tokens: int) -> torch.Tensor:
    """Logits whose argmax at position i is tokens[i]."""
    logits = torch.zeros((len(tokens), VOCAB))
    for i, t in enumerate(tokens):
        logits[i, t] = 30.0  # sampled rows draw it too
    return logits


def test_a_greedy_row_keeps_the_agreed_draft_and_the_models_next_token() -> None:
    chooser = TokenChooser(None, [EOS])
    steps = chooser.verify([_row()], _peaked(3, 4, 6, 2), [0], [[3, 4, 5]])
    assert [s.token_id for s in steps] == [3, 4, 6]  # 3, 4 agreed; 6 replaces 5
    assert (steps[0].drafted, steps[0].accepted) == (3, 2)
    assert all(s.drafted == 0 for s in steps[1:])


def test_a_fully_accepted_draft_adds_the_bonus_token_and_eos_ends_it() -> None:
    chooser = TokenChooser(None, [EOS])
    steps = chooser.verify([_row()], _peaked(3, 4, 1), [0], [[3, 4]])
    assert [s.token_id for s in steps] == [3, 4, 1]
    steps = chooser.verify([_row()], _peaked(EOS, 4, 1), [0], [[EOS, 4]])
    assert [s.token_id for s in steps] == [EOS]  # nothing is chosen after EOS


def test_rows_with_and_without_drafts_share_one_verification() -> None:
    chooser = TokenChooser(None, [EOS])
    logits = torch.cat([_peaked(2), _peaked(3, 4, 5)])
    steps = chooser.verify([_row(0), _row(1)], logits, [0, 1], [[], [3, 4]])
    assert [(s.key, s.token_id) for s in steps] == [(0, 2), (1, 3), (1, 4), (1, 5)]


def _sequential(row, logits: torch.Tensor) -> list[int]:
    """What decoding one token per step chooses from the same predictions."""
    chooser = TokenChooser(None, [EOS])
    return [chooser.choose([row], logits[i : i + 1])[0].token_id for i in range(len(logits))]


def test_a_sampled_row_chooses_what_it_would_without_the_draft_for_any_seed() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, VOCAB)
    chooser = TokenChooser(None, [])  # no EOS: every position is chosen
    for seed in range(50):
        want = _sequential(_row(temperature=1.0, seed=seed), logits)
        # The draft is the sequential choice itself (all accepted), or wrong at i.
        for wrong_at in range(4):
            draft = [*want[:wrong_at], (want[wrong_at] + 1) % VOCAB][:3]
            row = _row(temperature=1.0, seed=seed)
            got = [
                s.token_id for s in chooser.verify([row], logits[: len(draft) + 1], [0], [draft])
            ]
            assert got == want[: len(got)]
            assert len(got) == min(wrong_at, 3) + 1


def test_the_draw_follows_the_distribution(tmp_path) -> None:
    """Inverse-CDF sampling (one uniform per token): chi-square against softmax(logits)
    over 4000 seeds, 5 degrees of freedom, 0.1% critical value 20.5."""
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -9.0, -9.0]])
    probs = torch.softmax(logits[0], -1)[:6]
    probs = probs / probs.sum()
    chooser = TokenChooser(None, [EOS])
    draws = 4000
    counts = torch.zeros(VOCAB)
    for seed in range(draws):
        row = _row(temperature=1.0, seed=seed)
        counts[chooser.choose([row], logits)[0].token_id] += 1
    assert counts[6:].sum() <= 2  # -9 logits: ~0.004% each
    expected = probs * draws
    chi2 = float(((counts[:6] - expected) ** 2 / expected).sum())
    assert chi2 < 20.5, (chi2, counts.tolist())


def test_a_failure_halfway_through_verification_leaves_the_rows_as_they_were() -> None:
    chooser = TokenChooser(None, [EOS])
    row = _row(temperature=1.0, seed=3, repetition_penalty=1.3)
    generator_before, seen_before = row.generator.get_state(), row.seen.clone()
    original = chooser.choose
    calls = []

    def failing(rows, logits):
        calls.append(len(rows))
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return original(rows, logits)

    chooser.choose = failing  # type: ignore[method-assign]
    logits = _peaked(3, 4, 5)
    with pytest.raises(RuntimeError):
        chooser.verify([row], logits, [0], [[3, 4]])
    assert torch.equal(row.generator.get_state(), generator_before)
    assert torch.equal(row.seen, seen_before) and row.produced == 0 and row.next_input == -1


# -- the scheduler's delivery -----------------------------------------------------------------


class DraftingRunner:
    """Each decoding row allowed ``n`` drafts gets them all accepted: n + 1 tokens a step,
    ``key * 1000 + i`` for its i-th token; records the allowances it was given."""

    def __init__(self) -> None:
        self.info = ArenaInfo("arena", 8, 10_000, 0)
        self.kv_tokens_used = 0
        self.allowances: list[dict[int, int]] = []
        self._produced: dict[int, int] = {}

    def add(self, specs: Sequence[RowSpec]) -> dict[int, int]:
        return {s.key: 0 for s in specs}

    def step(self, plan: Plan) -> list[Step]:
        time.sleep(0.002 + 0.0005 * sum(n for _, n in plan.drafts))
        self.allowances.append(dict(plan.drafts))
        steps = [Step(c.key, c.key * 1000) for c in plan.chunks]
        for c in plan.chunks:
            self._produced[c.key] = 1
        allowed = dict(plan.drafts)
        for key in plan.decode:
            n = allowed.get(key, 0)
            for i in range(n + 1):
                token = key * 1000 + self._produced[key] + i
                steps.append(
                    Step(key, token, drafted=n if i == 0 else 0, accepted=n if i == 0 else 0)
                )
            self._produced[key] += n + 1
        return steps

    def reuse(self, key: int) -> int:
        return 0

    def remove(self, keys: Collection[int]) -> None:
        pass

    def release_memory(self) -> None:
        pass


class Collecting:
    def __init__(self, record: RequestRecord) -> None:
        self.record, self.tokens, self.reason = record, [], None
        self.done = threading.Event()

    def put_token(self, token_id: int, detail=None) -> None:
        self.tokens.append(token_id)

    def end(self) -> None:
        self.complete(self.record.control.finish_reason or FinishReason.LENGTH)

    def complete(self, reason: FinishReason) -> None:
        self.reason = reason
        self.done.set()


def test_tokens_past_max_new_tokens_inside_a_draft_are_dropped_and_counted_once() -> None:
    runner = DraftingRunner()
    streamers: list[Collecting] = []

    def make(record: RequestRecord) -> Collecting:
        streamers.append(Collecting(record))
        return streamers[-1]

    scheduler = Scheduler(runner, make, BatchLimits(speculative_tokens=4, max_step_stall=100))
    try:
        request = GenerationRequest("r", (1, 2, 3), False, max_new_tokens=23)
        job = scheduler.submit(request, lambda item: None)
        assert wait_until(lambda: streamers and streamers[0].done.is_set(), timeout=30)
        tokens = streamers[0].tokens
        assert tokens == list(range(23))  # exactly max_new_tokens, in order, none twice
        assert streamers[0].reason is FinishReason.LENGTH
        assert any(runner.allowances), "the rows drafted"
        # Allowances never ask for tokens past max_new_tokens (the bonus token included).
        produced = 1
        for allowed in runner.allowances[1:]:
            if 0 in allowed:
                assert produced + allowed[0] + 1 <= 23
                produced += allowed[0] + 1
            else:
                produced += 1
        load = scheduler.load()
        assert load.draft_tokens == job.control.draft_tokens > 0
        # Every draft of this runner is accepted; the totals count each step once.
        assert load.accepted_draft_tokens == job.control.accepted_draft_tokens
        assert job.control.accepted_draft_tokens == job.control.draft_tokens
        assert job.control.draft_tokens == sum(a.get(0, 0) for a in runner.allowances)
    finally:
        scheduler.close(5)


def test_a_request_that_opts_out_is_never_given_drafts() -> None:
    runner = DraftingRunner()
    done = threading.Event()

    class Quiet(Collecting):
        def complete(self, reason: FinishReason) -> None:
            done.set()

    scheduler = Scheduler(runner, Quiet, BatchLimits(speculative_tokens=4))
    try:
        request = GenerationRequest("r", (1, 2), False, max_new_tokens=60, speculative=False)
        scheduler.submit(request, lambda item: None)
        assert done.wait(30)
        assert not any(runner.allowances)
    finally:
        scheduler.close(5)
