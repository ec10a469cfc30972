"""A parsed document's markdown cut into chunks that fit a token budget, with provenance.

Retrieval pipelines split a parse into pieces that fit an embedding or generation model
and cite where each came from. Here that runs in the server process, after the worker
returned the markdown, because the tokenizer that counts is the served model's (or a
named one installed on the server), and the workers never load one.

The cut is hierarchical: whole sections (a heading and what follows it) while they fit,
several small ones in one chunk; a section that does not fit is cut between its blocks
(paragraphs, tables, code blocks); a block that alone exceeds the budget is cut between
sentences, then words, and only then between characters (with a warning); the chunk
after a cut section starts at the next heading. A table is never cut inside a row: a long table is
cut between rows and every continuation repeats the table's header row; a code block is
cut only between lines, and only when it alone is over the budget.

Every chunk is ``prefix + markdown[char_start:char_end]``: the spans tile the markdown
exactly (no gap, no overlap), and ``prefix`` (``prefix_chars`` long) is context repeated
from before: the previous chunk's last words (``overlap_tokens``) or a table's header.
So ``"".join(c.text[c.prefix_chars:] for c in chunks) == markdown``.

Token counts are the tokenizer's own count of each chunk's full text (prefix included,
no special tokens). Packing adds up the counts of the pieces; where a tokenizer counts a
joined text higher than its parts (BPE merges across a cut), the document is packed
again with a smaller budget, so every reported count is within ``max_tokens`` unless a
single character alone is over it.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .chunk_packing import HEADING, Block, ChunkingRefused, Counter, Packer, markdown_blocks

MAX_CHUNK_TOKENS = 1_048_576
MAX_CHUNKS = 100_000
# Packing again with a smaller budget when a joined text counts over the limit.
REPACK_ATTEMPTS = 4

# Token start offsets (characters) of each text: one tokenization of the document then
# counts any span by bisection (fast tokenizers have offsets; None: count every piece).
Starts = Callable[[list[str]], list[list[int]]]

# Markdown headings that mark pages (pdf, tiff), slides (pptx) and sheets (xlsx).
_PAGE_HEADING = re.compile(r"^## (?:Page|Slide) (\d+)[ \t]*$", re.MULTILINE)
_SHEET_HEADING = re.compile(r"^## Sheet: (.*)$", re.MULTILINE)
PAGE_TYPES = frozenset({"pdf", "tiff", "pptx", "odp"})
SHEET_TYPES = frozenset({"xlsx", "ods", "xls"})


@dataclass(frozen=True)
class ChunkingRequest:
    """What DocumentParseRequest.chunking asks for (validated)."""

    max_tokens: int
    overlap_tokens: int = 0
    tokenizer: str = ""  # "" = the served model's


@dataclass(frozen=True)
class Chunk:
    """One chunk: its text, its token count and where it came from."""

    text: str
    token_count: int
    heading_path: tuple[str, ...]
    page_start: int
    page_end: int
    char_start: int
    char_end: int
    prefix_chars: int


def page_marks(
    doc_type: str, markdown: str, sheet_names: Sequence[str] = ()
) -> list[tuple[int, int]]:
    """(offset, page) where each page, slide or sheet (1-based, in workbook order)
    starts in the markdown; empty for types without pages. Runs in the worker, which
    knows the sheet names (empty sheets have no heading but keep their number)."""
    if doc_type in PAGE_TYPES:
        return [(m.start(), int(m.group(1))) for m in _PAGE_HEADING.finditer(markdown)]
    if doc_type in SHEET_TYPES:
        numbers = {name: n for n, name in enumerate(sheet_names, start=1)}
        return [
            (match.start(), numbers.get(match.group(1).strip(), seen))
            for seen, match in enumerate(_SHEET_HEADING.finditer(markdown), start=1)
        ]
    return []


def chunk_markdown(
    markdown: str,
    request: ChunkingRequest,
    count: Counter,
    marks: Sequence[tuple[int, int]] = (),
    warnings: list[str] | None = None,
    starts: Starts | None = None,
) -> list[Chunk]:
    """The markdown's chunks (see the module docstring); ``count`` gives each text's
    token count; notes about forced cuts are appended to ``warnings``."""
    notes = warnings if warnings is not None else []
    if request.max_tokens <= 0 or request.max_tokens > MAX_CHUNK_TOKENS:
        raise ChunkingRefused(f"max_tokens must be 1..{MAX_CHUNK_TOKENS}")
    if not 0 <= request.overlap_tokens < request.max_tokens:
        raise ChunkingRefused("overlap_tokens must be at least 0 and less than max_tokens")
    if not markdown.strip():
        notes.append("chunking: the document has no text; no chunks")
        return []
    blocks = markdown_blocks(markdown)
    cache: dict[tuple[int, int], int] = {}
    index = _token_index(markdown, blocks, starts) if starts is not None else None
    limit = request.max_tokens
    for _attempt in range(REPACK_ATTEMPTS):
        packer = Packer(
            markdown, blocks, limit, request.overlap_tokens, count, cache, index, MAX_CHUNKS
        )
        spans = packer.pack()
        texts = [
            markdown[o:e] if header is None else header + markdown[s:e] for o, s, e, header in spans
        ]
        counts = count(texts)
        over = max(counts) - request.max_tokens
        if over <= 0 or limit <= 1:
            break
        limit = max(1, limit - over)
    notes.extend(packer.notes)
    if over > 0:
        notes.append(
            f"chunking: a chunk has {max(counts)} tokens, over max_tokens "
            f"{request.max_tokens} (a single character counts more)"
        )
    starts = [b.start for b in blocks]
    offsets = [offset for offset, _page in marks]
    chunks = []
    for (_origin, start, end, _header), text, tokens in zip(spans, texts, counts, strict=True):
        block = blocks[max(bisect.bisect_right(starts, start) - 1, 0)]
        chunks.append(
            Chunk(
                text=text,
                token_count=tokens,
                heading_path=block.path,
                page_start=_page_at(marks, offsets, start),
                page_end=_page_at(marks, offsets, end - 1),
                char_start=start,
                char_end=end,
                prefix_chars=len(text) - (end - start),
            )
        )
    return chunks


def _token_index(markdown: str, blocks: list[Block], starts: Starts) -> list[int]:
    """Where every token of the markdown starts, tokenized section by section (a batch
    the tokenizer runs in parallel; sections never share a token)."""
    edges = [b.start for b in blocks if b.kind == HEADING]
    edges = sorted({0, *edges, len(markdown)})
    spans = [(a, b) for a, b in itertools.pairwise(edges) if b > a]
    found = starts([markdown[a:b] for a, b in spans])
    return [a + offset for (a, _b), offsets in zip(spans, found, strict=True) for offset in offsets]


def _page_at(marks: Sequence[tuple[int, int]], offsets: list[int], position: int) -> int:
    index = bisect.bisect_right(offsets, position) - 1
    if index < 0:
        return marks[0][1] if marks else 0
    return marks[index][1]
