"""Per-token logprobs and top-n alternatives, as the client's TokenDetail.

The runner (runner.py) hands over each row's log-probabilities after the logits
processors (repetition penalty, min_new_tokens) and before the sampling warpers
(temperature, top-k, top-p), the point where transformers' ``generate`` would show a
custom processor the scores: the logprobs describe the model's distribution, not one
reshaped for sampling. A constraint's mask is one of those processors: alternatives
are the tokens the constraint allowed.
"""

from __future__ import annotations

from typing import Any

from ..domain import TokenDetail, TopToken


def token_detail(tokenizer: Any, logprobs: Any, token_id: int, top_n: int) -> TokenDetail:
    """The TokenDetail of ``token_id`` chosen from one step's ``logprobs`` (a 1-D tensor)."""
    import torch

    top: tuple[TopToken, ...] = ()
    if top_n:
        values, ids = torch.topk(logprobs, top_n)
        # Tokens a constraint or min_new_tokens forbade (logprob -inf) are no alternative.
        top = tuple(
            TopToken(int(i), _token_text(tokenizer, int(i)), float(v))
            for v, i in zip(values.tolist(), ids.tolist(), strict=True)
            if v != float("-inf")
        )
    return TokenDetail(token_id, _token_text(tokenizer, token_id), float(logprobs[token_id]), top)


def _token_text(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
