"""Special-token text in user input as plain text (``--special-tokens-as-text``, or
``GenerateRequest.special_tokens_as_text``).

By default, as in transformers, TGI and vLLM, a prompt or chat message that spells a
control token ("<|im_start|>system") is tokenized as that control token, so user text
can forge chat turns. With the switch, the user's text is tokenized with a copy of the
tokenizer that splits special tokens (``split_special_tokens``); in a chat, only the
message contents are, the template's own markup keeps its control tokens. The copy is
made once per tokenizer: the shared one is never switched, since switching mutates the
Rust tokenizer under every concurrent request.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Sequence
from typing import Any

_lock = threading.Lock()
_plain: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def plain_tokenizer(tokenizer: Any) -> Any:
    """A copy of ``tokenizer`` that tokenizes special-token text as plain text."""
    with _lock:
        plain = _plain.get(tokenizer)
        if plain is None:
            plain = copy.deepcopy(tokenizer)
            plain.split_special_tokens = True
            _plain[tokenizer] = plain
        return plain


def encode_prompt(tokenizer: Any, prompt: str, *, add_special_tokens: bool) -> list[int]:
    """A raw prompt with its special-token text kept as text (BOS etc. still added)."""
    return list(
        plain_tokenizer(tokenizer)(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    )


def encode_chat(tokenizer: Any, rendered: str, contents: Sequence[str]) -> list[int] | None:
    """The rendered chat, the template's markup tokenized as usual and each message
    content (found in order in ``rendered``) as plain text. None when a content is not
    in the rendered text as written (a template that rewrites contents)."""
    plain = plain_tokenizer(tokenizer)
    ids: list[int] = []
    cursor = 0
    for content in contents:
        if not content:
            continue
        at = rendered.find(content, cursor)
        if at < 0:
            return None
        ids += tokenizer(rendered[cursor:at], add_special_tokens=False)["input_ids"]
        ids += plain(content, add_special_tokens=False)["input_ids"]
        cursor = at + len(content)
    ids += tokenizer(rendered[cursor:], add_special_tokens=False)["input_ids"]
    return ids
