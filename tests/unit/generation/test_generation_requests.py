"""The in-process generation API (generation/api/requests.py): chat turns and limits to a
GenerationRequest without protobuf, one tokenization, a long text fitted to the context."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from zopilot_client.pb import generation_pb2 as pb
from zopilot_server.config import ServerConfig
from zopilot_server.error_table import to_service_error
from zopilot_server.generation.api.requests import (
    FIT_MARK,
    ChatTurn,
    RequestLimits,
    build_request,
)
from zopilot_server.generation.api.validation import to_generation_request
from zopilot_server.generation.domain import PromptTooLong
from zopilot_server.generation.loading.model_loader import LoadedModel, load_model

LONG = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(800))


class CountingTokenizer:
    """The real tokenizer, counting the calls that tokenize (part of) ``LONG``."""

    def __init__(self, tokenizer: Any, *, fast: bool = True) -> None:
        self._tokenizer = tokenizer
        self.is_fast = fast and tokenizer.is_fast
        self.long_calls = 0

    def __call__(self, text: str, **kwargs: Any) -> Any:
        if "Line 1: the quick" in text:
            self.long_calls += 1
        return self._tokenizer(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


@pytest.fixture(scope="module")
def loaded(tiny_config: ServerConfig) -> Iterator[LoadedModel]:
    yield load_model(tiny_config)


def counting(loaded: LoadedModel, *, fast: bool = True) -> tuple[LoadedModel, CountingTokenizer]:
    tokenizer = CountingTokenizer(loaded.tokenizer, fast=fast)
    return dataclasses.replace(loaded, tokenizer=tokenizer), tokenizer


def test_turns_give_the_tokens_of_the_same_grpc_request(
    loaded: LoadedModel, tiny_config: ServerConfig
) -> None:
    turns = [ChatTurn("system", "Be brief."), ChatTurn("user", "Name a colour.\n\n")]
    request, fitted = build_request(loaded, turns, RequestLimits(max_new_tokens=7))
    message = pb.GenerateRequest(max_new_tokens=7)
    for turn in turns:
        message.messages.add(role=turn.role, content=turn.content)
    expected = to_generation_request(message, loaded=loaded, config=tiny_config)
    assert request.input_ids == expected.input_ids
    assert request.max_new_tokens == 7 and request.sampling.greedy
    assert not fitted.cut and request.request_id  # an id is assigned when none is given


def test_a_fitted_text_that_fits_tokenizes_as_if_it_were_written_in(loaded: LoadedModel) -> None:
    text = "Total: 3 EUR\n"  # ends in a newline: the seam merges with the turn's own
    template = [ChatTurn("user", f"Document:\n{FIT_MARK}\n\nAnswer.")]
    request, fitted = build_request(loaded, template, RequestLimits(16), fit=text)
    written = [ChatTurn("user", f"Document:\n{text}\n\nAnswer.")]
    plain, _ = build_request(loaded, written, RequestLimits(16))
    assert request.input_ids == plain.input_ids
    assert (fitted.kept_chars, fitted.total_chars, fitted.cut) == (len(text), len(text), False)


@pytest.mark.parametrize("fast", [True, False], ids=["offsets", "python-tokenizer"])
def test_a_long_text_is_cut_to_the_room_and_tokenized_once(loaded: LoadedModel, fast: bool) -> None:
    model, tokenizer = counting(loaded, fast=fast)
    context, answer = loaded.max_context_length, 100
    template = [ChatTurn("system", "Extract."), ChatTurn("user", f"Document:\n{FIT_MARK}\nEnd.")]
    request, fitted = build_request(model, template, RequestLimits(answer), fit=LONG)
    assert tokenizer.long_calls == 1
    assert len(request.input_ids) == context - answer  # the room is used, not exceeded
    assert fitted.cut and 0 < fitted.kept_chars < fitted.total_chars == len(LONG)
    text = loaded.tokenizer.decode(request.input_ids)
    # The document's start is kept, its end is not, and the prompt after it is whole.
    assert "Line 0: the quick" in text and "Line 799" not in text
    assert text.endswith("\nEnd.<|im_end|>\n<|im_start|>assistant\n")
    kept = LONG[: fitted.kept_chars]
    assert kept.rstrip()[-20:] in text


def test_a_raw_prompt_gets_the_tokenizers_special_tokens(loaded: LoadedModel) -> None:
    request, _ = build_request(loaded, f"Q: {FIT_MARK}\nA:", RequestLimits(4), fit="why?")
    expected = loaded.tokenizer("Q: why?\nA:", add_special_tokens=True)["input_ids"]
    assert list(request.input_ids) == list(expected)


def test_no_room_is_a_domain_error_mapped_to_invalid_argument(loaded: LoadedModel) -> None:
    limits = RequestLimits(max_new_tokens=loaded.max_context_length)
    with pytest.raises(PromptTooLong) as info:
        build_request(loaded, [ChatTurn("user", FIT_MARK)], limits, fit="text")
    error = to_service_error(info.value)
    assert error.code.name == "INVALID_ARGUMENT" and "model context" in error.message


def test_the_deadline_keeps_the_delivery_margin(loaded: LoadedModel) -> None:
    limits = RequestLimits(4, time_remaining_s=10.0, deadline_margin_s=0.5)
    request, _ = build_request(loaded, "hi", limits)
    assert request.deadline is not None
    assert request.deadline - request.arrival == pytest.approx(9.5)
