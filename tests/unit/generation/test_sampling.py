"""Token choice on fixed logits (TokenChooser; no model forward): top-k, top-p, temperature,
repetition penalty, min_new_tokens, token details, seeds that survive a failed step, and
greedy and seeded rows in one batch choosing as they would alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from support import cuda_out_of_memory
from zopilot_server.generation.domain import GenerationRequest
from zopilot_server.generation.model.sampling import TokenChooser


def _chooser_draws(request_kw: dict[str, Any], logits: list[float], draws: int = 400) -> list[int]:
    """Tokens drawn for one row with the given sampling parameters, over many seeds."""
    from zopilot_server.generation.domain import SamplingParams
    from zopilot_server.generation.model.sampling import new_row

    chooser = TokenChooser(tokenizer=None, eos_token_ids=[0])
    out = []
    min_new = request_kw.pop("min_new_tokens", 0)
    seen = request_kw.pop("seen", ())
    for seed in range(draws):
        sampling = SamplingParams(seed=seed, **request_kw)
        request = GenerationRequest(
            "r", tuple(seen), False, max_new_tokens=4, min_new_tokens=min_new, sampling=sampling
        )
        row = new_row(0, request, len(logits), torch.device("cpu"))
        [step] = chooser.choose([row], torch.tensor([logits]))
        out.append(step.token_id)
    return out


LOGITS = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5]


def test_top_k_keeps_only_the_k_likeliest_tokens() -> None:
    assert set(_chooser_draws({"temperature": 1.0}, LOGITS)) > {0, 1}
    assert set(_chooser_draws({"temperature": 1.0, "top_k": 2}, LOGITS)) == {0, 1}


def test_top_p_keeps_the_smallest_set_over_p() -> None:
    # softmax(LOGITS): 0.36, 0.22, 0.13, 0.08, 0.05, 0.03 -> top_p 0.5 keeps tokens 0, 1
    assert set(_chooser_draws({"temperature": 1.0, "top_p": 0.5}, LOGITS)) == {0, 1}
    assert len(set(_chooser_draws({"temperature": 1.0, "top_p": 0.95}, LOGITS))) >= 4


def test_temperature_sharpens_and_flattens() -> None:
    cold = _chooser_draws({"temperature": 0.2}, LOGITS).count(0)
    warm = _chooser_draws({"temperature": 1.0}, LOGITS).count(0)
    hot = _chooser_draws({"temperature": 5.0}, LOGITS).count(0)
    assert cold > warm > hot


def test_repetition_penalty_lowers_seen_tokens() -> None:
    free = _chooser_draws({"temperature": 1.0, "seen": (0,)}, LOGITS).count(0)
    penalised = _chooser_draws(
        {"temperature": 1.0, "repetition_penalty": 3.0, "seen": (0,)}, LOGITS
    ).count(0)
    assert penalised < free / 2


def test_min_new_tokens_forbids_eos() -> None:
    assert 0 in _chooser_draws({"temperature": 1.0}, LOGITS)
    assert 0 not in _chooser_draws({"temperature": 1.0, "min_new_tokens": 2}, LOGITS)


def test_a_failed_choice_restores_the_generators() -> None:
    """A retried step draws what the failed one would have: seeds survive faults."""
    from zopilot_server.generation.domain import SamplingParams
    from zopilot_server.generation.model.sampling import new_row

    chooser = TokenChooser(tokenizer=None, eos_token_ids=[0])
    request = GenerationRequest(
        "r", (), False, max_new_tokens=4, sampling=SamplingParams(temperature=1.0, seed=3)
    )
    row = new_row(0, request, len(LOGITS), torch.device("cpu"))
    twin = new_row(0, request, len(LOGITS), torch.device("cpu"))
    original = chooser._pick

    def pick_then_fail(rows: Any, scores: Any) -> Any:
        original(rows, scores)  # the draw happens, then the step fails
        raise cuda_out_of_memory()

    chooser._pick = pick_then_fail  # type: ignore[method-assign]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        chooser.choose([row], torch.tensor([LOGITS]))
    chooser._pick = original  # type: ignore[method-assign]
    got = [chooser.choose([row], torch.tensor([LOGITS]))[0].token_id for _ in range(20)]
    want = [chooser.choose([twin], torch.tensor([LOGITS]))[0].token_id for _ in range(20)]
    assert got == want


def test_token_details_report_the_processed_distribution(tiny_model_dir: Path) -> None:
    """logprobs and top-n alternatives are those of the scores after the processors and
    before the warpers: the penalised, EOS-masked distribution, not the sampled one."""
    from transformers import AutoTokenizer
    from zopilot_server.generation.domain import SamplingParams
    from zopilot_server.generation.model.sampling import new_row

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    chooser = TokenChooser(tokenizer, eos_token_ids=[0])
    sampling = SamplingParams(temperature=0.5, top_k=1, repetition_penalty=2.0, seed=1)
    request = GenerationRequest(
        "r", (1,), False, max_new_tokens=3, min_new_tokens=1, token_details=True,
        top_n_tokens=2, sampling=sampling,
    )  # fmt: skip
    row = new_row(0, request, len(LOGITS), torch.device("cpu"))
    [step] = chooser.choose([row], torch.tensor([LOGITS]))
    # EOS (0) masked by min_new_tokens, token 1 penalised 1.5 -> 0.75: token 2 leads.
    processed = torch.tensor([float("-inf"), 0.75, 1.0, 0.5, 0.0, -0.5])
    want = torch.log_softmax(processed, -1)
    assert step.token_id == 2  # top_k 1 after the temperature: the processed argmax
    assert step.detail is not None and step.detail.id == 2
    assert step.detail.logprob == pytest.approx(float(want[2]), abs=1e-5)
    assert [t.id for t in step.detail.top_tokens] == [2, 1]
    assert step.detail.top_tokens[1].logprob == pytest.approx(float(want[1]), abs=1e-5)


def test_penalty_makes_a_negative_seen_score_more_negative() -> None:
    scores = [-1.0, -1.0, -3.0, -3.0]
    free = _chooser_draws({"temperature": 1.0, "seen": (0,)}, scores).count(0)
    penalised = _chooser_draws(
        {"temperature": 1.0, "repetition_penalty": 2.0, "seen": (0,)}, scores
    ).count(0)
    assert penalised < free * 0.6


def test_greedy_and_seeded_rows_in_one_batch_choose_as_alone() -> None:
    from zopilot_server.generation.domain import SamplingParams
    from zopilot_server.generation.model.sampling import new_row

    chooser = TokenChooser(tokenizer=None, eos_token_ids=[0])

    def rows() -> list[Any]:
        greedy = GenerationRequest("g", (), False, max_new_tokens=8)
        seeded = GenerationRequest(
            "s", (), False, max_new_tokens=8,
            sampling=SamplingParams(temperature=1.3, top_p=0.9, top_k=4, seed=5),
        )  # fmt: skip
        return [
            new_row(i, r, len(LOGITS), torch.device("cpu")) for i, r in enumerate((greedy, seeded))
        ]

    together, alone = rows(), rows()
    batch = [
        [s.token_id for s in chooser.choose(together, torch.tensor([LOGITS] * 2))]
        for _ in range(30)
    ]
    solo = [chooser.choose([alone[1]], torch.tensor([LOGITS]))[0].token_id for _ in range(30)]
    assert [b[0] for b in batch] == [0] * 30  # greedy: the argmax every time
    assert [b[1] for b in batch] == solo
    assert len(set(solo)) > 1
