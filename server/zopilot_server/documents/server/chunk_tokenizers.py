"""The tokenizer that counts DocumentParse chunks, and the chunking of a parse outcome.

Chunks are counted with the served model's tokenizer by default: the budget a pipeline
sets is usually the served model's context. A named tokenizer (an embedding model's,
say) must already lie in the server's Hugging Face cache: it is looked up as a hub id
only (never as a path on the server) and never downloaded. Loaded ones are kept.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from ...errors import FailedPrecondition, InvalidArgument, Unavailable
from ..chunking import ChunkingRefused, ChunkingRequest, chunk_markdown
from ..domain import OutputFormat, ParseOutcome
from .model_fields import EngineSource

NAMED_TOKENIZERS_KEPT = 4


class ChunkTokenizers:
    """Finds the tokenizer a chunking request names."""

    def __init__(self, engine: EngineSource) -> None:
        self._engine = engine

    async def resolve(self, request: ChunkingRequest) -> tuple[Any, str]:
        """The tokenizer and the name metadata.chunk_tokenizer reports; before any
        parsing, so a missing tokenizer costs the client no parse."""
        engine = self._engine()
        served = engine.loaded if engine is not None else None
        if not request.tokenizer or (served is not None and request.tokenizer == served.model_id):
            if served is None:
                raise Unavailable(
                    "chunking counts tokens with the served model's tokenizer, and the model "
                    "is still loading; retry shortly or name an installed tokenizer",
                    retry_after_s=1.0,
                )
            return served.tokenizer, served.model_id
        return await asyncio.to_thread(_named, request.tokenizer), request.tokenizer


@functools.lru_cache(maxsize=NAMED_TOKENIZERS_KEPT)
def _named(name: str) -> Any:
    """An installed tokenizer by hub id (the cache only; a path is never read)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError
    from transformers import AutoTokenizer

    try:
        folder = snapshot_download(repo_id=name, local_files_only=True)
    except HFValidationError as exc:
        raise InvalidArgument.single(
            "chunking.tokenizer", f"is not a Hugging Face model id ({exc})"[:200]
        ) from exc
    except Exception as exc:
        raise FailedPrecondition(
            f"the tokenizer {name!r} is not installed on this server (tokenizers are never "
            "downloaded); leave chunking.tokenizer empty for the served model's"
        ) from exc
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise FailedPrecondition(
            f"the installed model {name!r} has no usable tokenizer ({type(exc).__name__})"
        ) from exc


def counter(tokenizer: Any) -> Any:
    """Token counts of a batch of texts (no special tokens, never truncation options:
    they mutate the shared Rust tokenizer, see generation.api.validation.encode)."""

    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return count


def token_starts(tokenizer: Any) -> Any:
    """Token start offsets of a batch of texts, or None for a tokenizer without
    offsets (a slow one): chunking then counts each piece it considers."""
    if not getattr(tokenizer, "is_fast", False):
        return None

    def starts(texts: list[str]) -> list[list[int]]:
        found = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [[start for start, _end in offsets] for offsets in found["offset_mapping"]]

    return starts


async def chunk_outcome(
    outcome: ParseOutcome,
    request: ChunkingRequest,
    tokenizer: Any,
    tokenizer_name: str,
    keep_markdown: bool,
) -> ParseOutcome:
    """The outcome with its markdown's chunks (in a thread: tokenizing is CPU work)."""
    markdown = outcome.outputs.get(OutputFormat.MARKDOWN, "")
    if not keep_markdown:
        outcome.outputs.pop(OutputFormat.MARKDOWN, None)
    try:
        outcome.chunks = await asyncio.to_thread(
            chunk_markdown,
            markdown,
            request,
            counter(tokenizer),
            outcome.page_marks,
            outcome.warnings,
            token_starts(tokenizer),
        )
    except ChunkingRefused as exc:
        raise InvalidArgument.single("chunking", str(exc)) from exc
    outcome.chunk_tokenizer = tokenizer_name
    return outcome
