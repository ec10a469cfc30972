"""Per-token logprobs and top-n alternatives, captured while generate() runs.

``generate()`` only hands scores back at the very end, which is useless for streaming.
A logits processor sees each step's scores just before the next token is chosen and
the streamer sees the chosen token just after, so the processor keeps the step's
log-probabilities and the streamer looks the chosen token up in them.

transformers applies custom processors after its own processors (repetition penalty,
min-new-tokens) and before the sampling warpers (temperature, top-k, top-p), so the
logprobs describe the model's distribution, not one reshaped for sampling.
"""

from __future__ import annotations

from typing import Any

from .domain import TokenDetail, TopToken


class LogprobRecorder:
    """A LogitsProcessor (duck-typed: transformers only calls it) that remembers logprobs."""

    def __init__(self, tokenizer: Any, top_n: int) -> None:
        self._tokenizer = tokenizer
        self._top_n = top_n
        self._logprobs: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        self.record(torch.log_softmax(scores[0].float(), dim=-1))
        return scores

    def record(self, logprobs: Any) -> None:
        """Keep one step's log-probabilities (the batch runner calls this per row)."""
        self._logprobs = logprobs

    def detail(self, token_id: int) -> TokenDetail:
        """The TokenDetail of the token just chosen from the last recorded step."""
        import torch

        text = self._token_text(token_id)
        if self._logprobs is None:  # defensive: processor not called (should not happen)
            return TokenDetail(token_id, text, float("nan"))
        logprob = float(self._logprobs[token_id])
        top: tuple[TopToken, ...] = ()
        if self._top_n:
            values, ids = torch.topk(self._logprobs, self._top_n)
            top = tuple(
                TopToken(int(i), self._token_text(int(i)), float(v))
                for v, i in zip(values.tolist(), ids.tolist(), strict=True)
            )
        return TokenDetail(token_id, text, logprob, top)

    def _token_text(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
