"""How chunking.py cuts: the markdown's blocks (headings, paragraphs, tables, code)
with the heading path in force at each, and the greedy packer that fills chunks from
the piece tree (sections, blocks, sentences, words, rows, lines, characters).

chunking.py holds the API (the request, the chunks and their provenance); this module
the cutting, so that each stays readable on its own.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

Counter = Callable[[list[str]], list[int]]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_TABLE_RULE = re.compile(r"^\s*\|[\s\-:|]+\|\s*$")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t#]*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_WORD_END = re.compile(r"\s+")

# Piece kinds, from the coarsest to the finest.
DOCUMENT, SECTION = "document", "section"
HEADING, PARAGRAPH, TABLE, CODE = "heading", "paragraph", "table", "code"
SENTENCE, WORD, ROW, LINE, CHARS = "sentence", "word", "row", "line", "chars"
_PROSE = frozenset({HEADING, PARAGRAPH, SENTENCE, WORD})


class ChunkingRefused(ValueError):
    """The chunking asked for cannot be done (INVALID_ARGUMENT on ``chunking``)."""


@dataclass(frozen=True)
class Piece:
    start: int
    end: int
    kind: str


@dataclass
class Block:
    start: int
    end: int
    kind: str
    path: tuple[str, ...]


# --- the markdown's blocks ------------------------------------------------------------


def markdown_blocks(markdown: str) -> list[Block]:
    """Headings, paragraphs, tables and code blocks, each with the blank lines after it
    (so the blocks tile the text), and the heading path in force at each."""
    lines = markdown.splitlines(keepends=True)
    blocks: list[Block] = []
    stack: list[tuple[int, str]] = []
    offset, index = 0, 0

    def add(kind: str, start: int, end: int) -> None:
        blocks.append(Block(start, end, kind, tuple(title for _level, title in stack)))

    while index < len(lines):
        line = lines[index]
        start = offset
        if not line.strip():  # blank lines before any block: they join the first one
            offset += len(line)
            index += 1
            if blocks:
                blocks[-1].end = offset
            continue
        fence = _FENCE.match(line)
        heading = _HEADING.match(line.rstrip("\r\n"))
        if fence:
            kind, index, offset = CODE, index + 1, offset + len(line)
            while index < len(lines):
                closing = lines[index]
                index, offset = index + 1, offset + len(closing)
                if closing.lstrip(" ").startswith(fence.group(1)) and not closing.strip(
                    fence.group(1)[0] + " \r\n"
                ):
                    break
        elif heading:
            kind, index, offset = HEADING, index + 1, offset + len(line)
            level, title = len(heading.group(1)), (heading.group(2) or "").strip()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
        elif _TABLE_ROW.match(line):
            kind = TABLE
            while index < len(lines) and _TABLE_ROW.match(lines[index]):
                offset += len(lines[index])
                index += 1
        else:
            kind = PARAGRAPH
            while index < len(lines) and _paragraph_goes_on(lines[index]):
                offset += len(lines[index])
                index += 1
        if not blocks and start > 0:
            start = 0
        add(kind, start, offset)
    if not blocks:
        return [Block(0, len(markdown), PARAGRAPH, ())]
    blocks[-1].end = len(markdown)
    return blocks


def _paragraph_goes_on(line: str) -> bool:
    stripped = line.rstrip("\r\n")
    return bool(
        line.strip()
        and not _FENCE.match(line)
        and not _HEADING.match(stripped)
        and not _TABLE_ROW.match(line)
    )


# --- packing ------------------------------------------------------------------------


class Packer:
    """Greedy packing of the piece tree into chunks of at most ``limit`` tokens."""

    def __init__(
        self,
        markdown: str,
        blocks: list[Block],
        limit: int,
        overlap: int,
        count: Counter,
        cache: dict[tuple[int, int], int],
        index: list[int] | None = None,
        max_chunks: int = 100_000,
    ) -> None:
        self.md = markdown
        self.max_chunks = max_chunks
        self.index = index
        self.blocks = blocks
        self.limit = limit
        self.overlap = min(overlap, limit - 1)  # a repack may lower the limit below it
        self._count = count
        self.cache = cache
        self.notes: list[str] = []
        # (origin, start, end, header): text = header + md[start:end] when header is not
        # None, else md[origin:end] (origin < start: the overlap).
        self.spans: list[tuple[int, int, int, str | None]] = []
        self.start = self.end = 0
        self.origin = 0
        self.header: str | None = None
        self.used = 0  # tokens in the current chunk, prefix included
        self.last_kind = ""
        self.table_header: str | None = None
        self._forced: set[str] = set()

    def pack(self) -> list[tuple[int, int, int, str | None]]:
        sections = self._sections()
        for piece, tokens in zip(sections, self._counts(sections), strict=True):
            self._place(piece, tokens)
        self._flush(final=True)
        return self.spans

    def _sections(self) -> list[Piece]:
        pieces: list[Piece] = []
        for block in self.blocks:
            if block.kind == HEADING or not pieces:
                pieces.append(Piece(block.start, block.end, SECTION))
            else:
                pieces[-1] = Piece(pieces[-1].start, block.end, SECTION)
        return pieces

    def _counts(self, pieces: list[Piece]) -> list[int]:
        if self.index is not None:
            return [self._indexed(p.start, p.end) for p in pieces]
        todo = [p for p in pieces if (p.start, p.end) not in self.cache]
        if todo:
            found = self._count([self.md[p.start : p.end] for p in todo])
            self.cache.update(((p.start, p.end), n) for p, n in zip(todo, found, strict=True))
        return [self.cache[(p.start, p.end)] for p in pieces]

    def _place(self, piece: Piece, tokens: int) -> None:
        if self.end > self.start and self.used + tokens <= self.limit:
            self._append(piece, tokens)
            return
        if self.end > self.start:
            self._flush()
        if self.used + tokens <= self.limit:
            self._append(piece, tokens)
            return
        children = self._children(piece)
        if children is None:  # one character over the whole budget: it goes alone
            self._append(piece, tokens)
            return
        table = piece.kind == TABLE
        for child, child_tokens in zip(children, self._counts(children), strict=True):
            self._place(child, child_tokens)
            if table and self.table_header is None:
                self.table_header = self._table_header(piece)
        if table:
            self.table_header = None
        if piece.kind == SECTION:
            self._flush()  # the tail of a cut section is not glued to the next section

    def _append(self, piece: Piece, tokens: int) -> None:
        if self.end == self.start:
            self.start = self.end = piece.start
        self.end = piece.end
        self.used += tokens
        self.last_kind = piece.kind

    def _flush(self, final: bool = False) -> None:
        if self.end == self.start:
            return
        if len(self.spans) >= self.max_chunks:
            raise ChunkingRefused(
                f"the document makes more than {self.max_chunks} chunks; raise max_tokens"
            )
        self.spans.append((self.origin, self.start, self.end, self.header))
        previous = (self.start, self.end)
        self.start = self.end = self.origin = previous[1]
        self.header, self.used = None, 0
        if final:
            return
        if self.table_header is not None:
            tokens = self._counts_text(self.table_header)
            if 2 * tokens <= self.limit:
                self.header, self.used = self.table_header, tokens
            elif "header" not in self._forced:
                self._forced.add("header")
                self.notes.append(
                    "chunking: a table's header row is over half the token budget; "
                    "its continuation chunks do not repeat it"
                )
        elif self.overlap and self.last_kind in _PROSE:
            self.origin = self._overlap_start(*previous)
            if self.origin < previous[1]:
                if self.index is not None:
                    self.used = self._indexed(self.origin, previous[1])
                else:
                    self.used = self._counts_text(self.md[self.origin : previous[1]])

    def _indexed(self, start: int, end: int) -> int:
        assert self.index is not None
        return bisect.bisect_left(self.index, end) - bisect.bisect_left(self.index, start)

    def _counts_text(self, text: str) -> int:
        key = (-1, hash(text))
        if key not in self.cache:
            self.cache[key] = self._count([text])[0]
        return self.cache[key]

    def _overlap_start(self, start: int, end: int) -> int:
        """Where the previous chunk's last words within ``overlap`` tokens begin."""
        if self.index is not None:
            first = bisect.bisect_left(self.index, start)
            last = bisect.bisect_left(self.index, end)
            at = self.index[max(first, last - self.overlap)] if last > first else end
            if at > start and not self.md[at - 1].isspace():
                found = _WORD_END.search(self.md, at, end)  # the next word's start
                at = found.end() if found else end
            return min(max(at, start), end)
        cuts = [m.end() for m in _WORD_END.finditer(self.md, start, end) if m.end() < end]
        cuts.insert(0, start)
        low, high = 0, len(cuts)  # cuts[low:] are candidates; fewer words from higher
        best = end
        while low < high:
            middle = (low + high) // 2
            if self._counts_text(self.md[cuts[middle] : end]) <= self.overlap:
                best, high = cuts[middle], middle
            else:
                low = middle + 1
        return best

    def _table_header(self, table: Piece) -> str:
        lines = self.md[table.start : table.end].splitlines(keepends=True)
        head = lines[:2] if len(lines) > 1 and _TABLE_RULE.match(lines[1]) else lines[:1]
        header = "".join(head)
        return header if header.endswith("\n") else header + "\n"

    def _children(self, piece: Piece) -> list[Piece] | None:
        """The next finer pieces of ``piece``; None for a single character."""
        kind = piece.kind
        if kind == SECTION:
            return [
                Piece(b.start, b.end, b.kind)
                for b in self.blocks
                if piece.start <= b.start < piece.end
            ]
        if kind == TABLE:
            return self._rows(piece)
        if kind == CODE:
            lines = self._split(piece, re.compile(r"\n"), LINE)
            if len(lines) > 1:
                return lines
        if kind in (HEADING, PARAGRAPH):
            sentences = self._split(piece, _SENTENCE_END, SENTENCE)
            if len(sentences) > 1:
                return sentences
            kind = SENTENCE
        if kind == SENTENCE:
            words = self._split(piece, _WORD_END, WORD)
            if len(words) > 1:
                return words
            kind = WORD
        return self._halves(piece, kind)

    def _rows(self, table: Piece) -> list[Piece]:
        """A table's rows; the header (and its rule) travel with the first data row."""
        cuts = [table.start]
        for match in re.finditer(r"\n", self.md[table.start : table.end]):
            at = table.start + match.end()
            if at < table.end and self.md[at : table.end].strip():
                cuts.append(at)
        cuts.append(table.end)
        rows = [Piece(a, b, ROW) for a, b in itertools.pairwise(cuts) if b > a]
        ruled = len(rows) > 2 and _TABLE_RULE.match(self.md[rows[1].start : rows[1].end])
        head = min(3 if ruled else 2, len(rows))
        return [Piece(rows[0].start, rows[head - 1].end, ROW), *rows[head:]]

    def _split(self, piece: Piece, boundary: re.Pattern[str], kind: str) -> list[Piece]:
        cuts = [m.end() for m in boundary.finditer(self.md, piece.start, piece.end)]
        edges = [piece.start, *(c for c in cuts if piece.start < c < piece.end), piece.end]
        return [Piece(a, b, kind) for a, b in itertools.pairwise(edges) if b > a]

    def _halves(self, piece: Piece, kind: str) -> list[Piece] | None:
        if piece.end - piece.start <= 1:
            return None
        if kind != CHARS and kind not in self._forced:
            self._forced.add(kind)
            what = {ROW: "a table row", LINE: "a code line", WORD: "a word"}.get(kind, kind)
            self.notes.append(
                f"chunking: {what} alone is over the token budget; it was split between characters"
            )
        middle = (piece.start + piece.end) // 2
        return [Piece(piece.start, middle, CHARS), Piece(middle, piece.end, CHARS)]
