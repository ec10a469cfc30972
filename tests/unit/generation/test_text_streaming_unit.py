"""Unit tests of the text path: incremental detokenization and stop-sequence hold-back."""

from __future__ import annotations

import pytest
from zopilot_server.generation.output.detokenizer import REPLACEMENT_CHAR, IncrementalDetokenizer
from zopilot_server.generation.output.stop_sequences import StopSequenceMatcher


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir))


MULTIBYTE = "Prix: 12€ — naïve café, 東京 🎉👩‍💻 ok"


def test_multibyte_text_streams_without_replacement_chars(tokenizer):
    ids = tokenizer(MULTIBYTE, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert all(REPLACEMENT_CHAR not in d for d in deltas)
    assert "".join(deltas) == MULTIBYTE
    # the emoji are split over several byte tokens, so some pushes must have held back
    assert deltas.count("") > 0


def test_invalid_utf8_at_the_end_is_flushed(tokenizer):
    ids = tokenizer("🎉", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1, "the emoji should span several byte-level tokens"
    detok = IncrementalDetokenizer(tokenizer)
    held = [detok.push(i) for i in ids[:-1]]
    assert held == [""] * len(held)
    assert REPLACEMENT_CHAR in detok.flush()


def feed_all(matcher: StopSequenceMatcher, deltas: list[str]) -> tuple[list[str], str | None]:
    sent: list[str] = []
    for delta in deltas:
        result = matcher.feed(delta)
        sent.append(result.text)
        if result.matched is not None:
            return sent, result.matched
    sent.append(matcher.flush())
    return sent, None


def test_stop_sequence_split_across_deltas_is_matched_and_never_sent():
    matcher = StopSequenceMatcher(("###",), include_stop_sequence=False)
    sent, matched = feed_all(matcher, ["Hello #", "#", "# tail"])
    assert matched == "###"
    assert "".join(sent) == "Hello "
    assert sent[0] == "Hello "  # the '#' that might start the stop sequence was held back


def test_include_stop_sequence_returns_the_match():
    matcher = StopSequenceMatcher(("END",), include_stop_sequence=True)
    sent, matched = feed_all(matcher, ["abc E", "N", "Dxyz"])
    assert matched == "END"
    assert "".join(sent) == "abc END"


def test_held_back_text_is_released_when_it_cannot_match():
    matcher = StopSequenceMatcher(("stop",), include_stop_sequence=False)
    assert matcher.feed("we st").text == "we "
    assert matcher.feed("ar").text == "star"
    assert matcher.feed("ts st").text == "ts "
    assert matcher.flush() == "st"


def test_earliest_of_several_stop_sequences_wins():
    matcher = StopSequenceMatcher(("world", "lo w"), include_stop_sequence=False)
    sent, matched = feed_all(matcher, ["hello world"])
    assert matched == "lo w"
    assert "".join(sent) == "hel"


def test_no_stop_sequences_passes_text_through():
    matcher = StopSequenceMatcher((), include_stop_sequence=False)
    assert matcher.feed("abc").text == "abc"
    assert matcher.flush() == ""


def test_fast_path_decodes_exactly_like_the_tokenizer(tokenizer):
    ids = tokenizer(MULTIBYTE + " <|im_end|> more", add_special_tokens=False)["input_ids"]
    fast = IncrementalDetokenizer(tokenizer)
    assert fast._backend_decode is not None
    for end in range(len(ids) + 1):
        assert fast._decode(ids[:end]) == tokenizer.decode(
            ids[:end], skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
