"""GenerationRequests built in-process, without protobuf: the API other modules call.

The gRPC path (validation.py) turns a GenerateRequest message into a GenerationRequest;
an in-process caller (documents/server/model_fields.py) has chat turns and limits instead, and
comes here. Both share the pieces below (chat rendering, tokenizing, deadlines), so a
turn list gives the same tokens either way. Errors are the domain's own (PromptTooLong,
InvalidConstraint, ConstraintUnavailable), which error_table.py maps to statuses.

``build_request`` can fit one long text (a document) into the context: the text stands
in the prompt as ``FIT_MARK``; the prompt with the text in it is tokenized once, as a
whole (its seams tokenize as in any other request), and the text's tokens are cut to the
room the context leaves, so a long document is never tokenized twice nor decoded and
encoded again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..domain import (
    ConstraintKind,
    ConstraintUnavailable,
    GenerationRequest,
    PromptTooLong,
    SamplingParams,
)
from ..loading.model_loader import LoadedModel
from ..model.constraints import ConstraintCompiler

# No token is longer than this many characters (in any tokenizer we serve), so cutting a
# text to ``tokens * CHARS_PER_TOKEN_BOUND`` characters before tokenizing loses nothing.
CHARS_PER_TOKEN_BOUND = 16
# Where the fitted text goes in a prompt or turn: private-use characters that no chat
# template alters and no client text is expected to contain.
FIT_MARK = "\ue000zopilot-fit\ue000"


@dataclass(frozen=True)
class ChatTurn:
    """One message of a chat, as the chat template takes it."""

    role: str  # system, user, assistant (whatever the template knows)
    content: str


@dataclass(frozen=True)
class RequestLimits:
    """How long and how much: ``time_remaining_s`` is the caller's own deadline (say, its
    gRPC call's), ``deadline_margin_s`` the time kept back to deliver the answer."""

    max_new_tokens: int
    time_remaining_s: float | None = None
    deadline_margin_s: float = 0.0


@dataclass(frozen=True)
class Fitted:
    """What ``build_request`` kept of the fitted text."""

    kept_chars: int  # characters of the text the prompt carries
    total_chars: int  # characters of the text given

    @property
    def cut(self) -> bool:
        return self.kept_chars < self.total_chars


def new_request_id(client_id: str) -> str:
    return client_id or uuid.uuid4().hex


def encode(tokenizer: Any, text: str, *, add_special_tokens: bool) -> list[int]:
    """Token ids of ``text``. Never passes truncation options: they mutate the (shared)
    Rust tokenizer and make concurrent use fail with 'Already borrowed'."""
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def truncate_left(ids: list[int], keep_last: int) -> tuple[list[int], bool]:
    if keep_last > 0 and len(ids) > keep_last:
        return ids[-keep_last:], True
    return ids, False


def render_chat(loaded: LoadedModel, turns: Sequence[ChatTurn]) -> str:
    """The turns through the model's chat template, ready for the assistant's answer."""
    return loaded.tokenizer.apply_chat_template(
        [{"role": t.role, "content": t.content} for t in turns],
        tokenize=False,
        add_generation_prompt=True,
    )


def deadline(
    arrival: float,
    *,
    time_limit_s: float | None = None,
    time_remaining_s: float | None = None,
    margin_s: float = 0.0,
) -> float | None:
    """The earlier of the request's own time limit and the caller's deadline less the
    delivery margin (time.monotonic() clock); None = no limit."""
    candidates = []
    if time_limit_s:
        candidates.append(arrival + time_limit_s)
    if time_remaining_s is not None:
        candidates.append(arrival + time_remaining_s - margin_s)
    return min(candidates) if candidates else None


def build_request(
    loaded: LoadedModel,
    prompt: str | Sequence[ChatTurn],
    limits: RequestLimits,
    *,
    fit: str = "",
    constraint: tuple[ConstraintKind, str] | None = None,
    constraints: ConstraintCompiler | None = None,
    request_id: str = "",
) -> tuple[GenerationRequest, Fitted]:
    """A greedy GenerationRequest for ``prompt`` (raw text, or chat turns rendered by the
    template), with ``fit`` cut to what the context leaves where ``FIT_MARK`` stands.

    Raises PromptTooLong when the prompt without ``fit`` already leaves no room for
    ``limits.max_new_tokens``; ConstraintUnavailable / InvalidConstraint for a
    constraint this server cannot follow.
    """
    arrival = time.monotonic()
    chat = not isinstance(prompt, str)
    text = render_chat(loaded, prompt) if chat else prompt  # type: ignore[arg-type]
    before, mark, after = text.partition(FIT_MARK)
    if not mark and fit:
        raise ValueError("build_request: fit given, but the prompt has no FIT_MARK")
    # Characters first: tokenizing 30 MiB of document to keep 2000 tokens is waste.
    room = loaded.max_context_length - limits.max_new_tokens
    kept = fit[: max(room, 0) * CHARS_PER_TOKEN_BOUND]
    # A raw prompt gets the tokenizer's special tokens (a BOS, say); a rendered chat
    # already carries them as text.
    ids, span = _tokenize_around(loaded.tokenizer, before, kept, after, add_special_tokens=not chat)
    fixed = len(ids) - (span.stop - span.start)
    room -= fixed
    if room < 0 or (fit and room == 0):
        raise PromptTooLong(fixed, limits.max_new_tokens, loaded.max_context_length)
    kept_chars = len(kept)
    if span.stop - span.start > room:
        ids = ids[: span.start + room] + ids[span.stop :]
        kept_chars = span.chars_through(span.start + room)
    compiled = None
    if constraint is not None:
        if constraints is None:
            raise ConstraintUnavailable("constrained decoding is not available on this server")
        compiled = constraints.compile(*constraint)
    request = GenerationRequest(
        request_id=new_request_id(request_id),
        input_ids=tuple(ids),
        input_truncated=False,
        max_new_tokens=limits.max_new_tokens,
        sampling=SamplingParams(),
        deadline=deadline(
            arrival, time_remaining_s=limits.time_remaining_s, margin_s=limits.deadline_margin_s
        ),
        arrival=arrival,
        constraint=compiled,
    )
    return request, Fitted(kept_chars=kept_chars, total_chars=len(fit))


@dataclass(frozen=True)
class _Span:
    """Where the fitted text's tokens lie in the prompt's ids (``start:stop``), and how
    many of its characters its first n tokens cover (``chars(n)``, for the cut's note)."""

    start: int
    stop: int
    chars: Callable[[int], int] = len

    def chars_through(self, index: int) -> int:
        return self.chars(index - self.start) if index > self.start else 0


def _tokenize_around(
    tokenizer: Any, before: str, text: str, after: str, *, add_special_tokens: bool
) -> tuple[list[int], _Span]:
    """``before + text + after`` tokenized once, as a whole (so the seams tokenize as in
    any other request), and which tokens are ``text``'s (the tokens entirely inside it;
    one that straddles a seam belongs to the prompt around it)."""
    if not text:
        return encode(tokenizer, before + after, add_special_tokens=add_special_tokens), _Span(0, 0)
    if not getattr(tokenizer, "is_fast", False):
        # No offsets from a Python tokenizer: tokenize the three parts on their own.
        head, tail = _specials(tokenizer) if add_special_tokens else ([], [])
        head += encode(tokenizer, before, add_special_tokens=False)
        middle = encode(tokenizer, text, add_special_tokens=False)
        tail = encode(tokenizer, after, add_special_tokens=False) + tail

        def decoded_chars(n: int) -> int:
            return len(tokenizer.decode(middle[:n], skip_special_tokens=True))

        return head + middle + tail, _Span(len(head), len(head) + len(middle), decoded_chars)
    encoding = tokenizer(
        before + text + after, add_special_tokens=add_special_tokens, return_offsets_mapping=True
    )
    ids = list(encoding["input_ids"])
    low, high = len(before), len(before) + len(text)
    inside = [
        i for i, (start, end) in enumerate(encoding["offset_mapping"])
        if low <= start < end <= high
    ]  # fmt: skip
    if not inside:
        return ids, _Span(0, 0)
    first, last = inside[0], inside[-1] + 1
    offsets = encoding["offset_mapping"]
    return ids, _Span(first, last, lambda n: offsets[first + n - 1][1] - low)


def _specials(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text of its own."""
    bare = encode(tokenizer, "x", add_special_tokens=False)
    full = encode(tokenizer, "x", add_special_tokens=True)
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return full, []  # pragma: no cover - a tokenizer that rewrites the text itself
