"""Incremental detokenization that never emits half a character.

Byte-level BPE tokens can end in the middle of a multi-byte UTF-8 character; decoding
such a prefix yields U+FFFD. Like text-generation-inference's ``decode_token``, we
decode a small window of ids twice (with and without the newest tokens) and only emit
the difference once it no longer ends in U+FFFD, so deltas never carry a replacement
character for a character that is still being completed, and the deltas concatenated
equal the decoded text.
"""

from __future__ import annotations

from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    """The part of a Hugging Face tokenizer this module uses."""

    def decode(self, ids: list[int], **kwargs: object) -> str: ...


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas."""

    def __init__(self, tokenizer: Decoder) -> None:
        self._tokenizer = tokenizer
        # A fast tokenizer's Rust backend decodes exactly what tokenizer.decode(...,
        # clean_up_tokenization_spaces=False) returns, without ~50 us of Python wrapping
        # per call: twice per token, in the scheduler thread, that is a measurable share of
        # a small model's decoding step.
        backend = getattr(tokenizer, "_tokenizer", None)
        self._backend_decode = getattr(backend, "decode", None)
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        if self._backend_decode is not None:
            return self._backend_decode(ids, skip_special_tokens=True)
        return self._tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT_CHAR):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Return whatever is still held back (the bytes really are invalid UTF-8)."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :]
