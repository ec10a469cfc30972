"""Structure a PDF's text layer does not state: headings, columns, tables without rules.

A PDF draws glyphs; that a line is a heading, or that the page has two columns, is only
visible in the fonts and the geometry. For a page without ruled tables (tables.py
handles those), this module reads PyMuPDF's blocks (paragraph-like groups of lines, each
span with its font size and flags) and:

- **headings**: the body size is the size that carries most of the page's characters; a
  short block (at most ``HEADING_MAX_LINES`` lines and ``HEADING_MAX_CHARS``
  characters) set at least ``HEADING_MIN_RATIO`` times larger, or entirely bold and on
  its own, is a heading. Its level comes from the ratio, the same on every page: ``###``
  from 1.6x, ``####`` from 1.3x, ``#####`` below (and for bold body-size lines); ``#``
  and ``##`` stay free because each page is a ``## Page N`` section.
- **columns**: gutters are x ranges, 8 pt wide at least and inside the middle 70% of
  the text, that few lines of the page's paragraphs cover (5%, else 15%, of the lines
  at the busiest x; a paragraph is a block narrower than ``NARROW_SHARE`` of the text's
  width, of two lines or more, 20 characters a line on average). When they cut the page
  into columns a quarter of the width at least whose paragraphs stand side by side, the
  page is read column by column, left to right; the blocks that fit in a column go with
  it, and those that cross a gutter or span the page (a title, a centred author line, a
  footer) keep their place between the bands of columns.
- **tables without rules**: when the page has no paragraph and its narrow blocks stand
  side by side in groups of short lines, they are a grid: the groups are its columns
  and lines at the same height its rows; with 2 rows and 2 columns at least, 60% of
  the cells filled and 2 cells in every row, it becomes a markdown table (the first
  row its header) at the place of its first block; anything less regular keeps its
  lines.

When none is found the page reads exactly as before (``page.get_text()``), so plain
pages cost one extra ``get_text("dict")`` and nothing else changes for them.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .. import markdown_tables

HEADING_MIN_RATIO = 1.15
HEADING_MAX_LINES = 3
HEADING_MAX_CHARS = 200
NARROW_SHARE = 0.55
COLUMN_MIN_SHARE = 0.25
COLUMN_MIN_LINE_CHARS = 20
GUTTER_BIN = 2.0  # points
GUTTER_MIN_WIDTH = 8.0
# A gutter is covered by at most this share of the lines covering the busiest x: the
# strict value first, then the lenient one (a centred block bridging two columns).
GUTTER_MAX_COVER = (0.05, 0.15)
GRID_MIN_FILLED = 0.6
GRID_MAX_LINES = 2000  # a page with more short lines than this is not searched for a grid
BOLD_FLAG = 16  # PyMuPDF span flags: bit 4 is bold
BOLD_MIN_RATIO = 0.95
_HASH_LINE = re.compile(r"^([ \t]*)#", re.MULTILINE)
_LETTER = re.compile(r"[^\W\d_]")


@dataclass
class Block:
    """One text block: its box, its lines' text, and its font facts."""

    x0: float
    y0: float
    x1: float
    y1: float
    lines: list[str]
    boxes: list[tuple[float, float, float, float]]  # each line's box
    size: float  # the largest span size (the heading test uses the dominant one)
    bold: bool  # every non-blank span is bold
    chars: Counter[float]  # characters per (rounded) size

    @property
    def text(self) -> str:
        return " ".join(" ".join(line.split()) for line in self.lines if line.strip())


@dataclass
class PageStructure:
    """What was recovered from one page."""

    markdown: str
    headings: int
    columns: int
    tables: int = 0  # grids of short cells read as tables (no ruling lines)


def blocks_of(page_dict: dict[str, Any]) -> list[Block]:
    """The text blocks of a ``page.get_text("dict")`` result, in stream order. A block
    whose lines lie in separate horizontal bands (PyMuPDF groups lines by their order
    in the content stream, so a page written line by line across two columns is one
    block) is split into one block per band."""
    found = []
    for block in page_dict.get("blocks", ()):
        if block.get("type", 0) != 0:
            continue
        lines = [line for line in block.get("lines", ()) if _line_text(line).strip()]
        for band in _bands(lines):
            found.append(_block(band))
    return found


def _line_text(line: dict[str, Any]) -> str:
    return "".join(span.get("text", "") for span in line.get("spans", ()))


def _bands(lines: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Lines grouped by overlapping horizontal extent, each group in stream order."""
    if len(lines) < 2:
        return [lines] if lines else []
    order = sorted(range(len(lines)), key=lambda i: lines[i]["bbox"][0])
    groups: list[list[int]] = []
    right = float("-inf")
    for i in order:
        x0, _y0, x1, _y1 = lines[i]["bbox"]
        if groups and x0 < right:
            groups[-1].append(i)
            right = max(right, x1)
        else:
            groups.append([i])
            right = x1
    return [[lines[i] for i in sorted(group)] for group in groups]


def _block(lines: list[dict[str, Any]]) -> Block:
    texts, sizes, chars = [], [], Counter[float]()
    bold = True
    for line in lines:
        texts.append(_line_text(line))
        for span in line.get("spans", ()):
            text = span.get("text", "").strip()
            if not text:
                continue
            size = round(float(span.get("size", 0.0)), 1)
            sizes.append(size)
            chars[size] += len(text)
            bold = bold and bool(int(span.get("flags", 0)) & BOLD_FLAG)
    boxes = [line["bbox"] for line in lines]
    return Block(
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
        texts,
        [tuple(box) for box in boxes],
        max(sizes, default=0.0),
        bold,
        chars,
    )


def structure(page_dict: dict[str, Any]) -> PageStructure | None:
    """The page as markdown with headings and column order, or None when it has
    neither (the caller keeps the plain text)."""
    blocks = blocks_of(page_dict)
    if not blocks:
        return None
    body = _body_size(blocks)
    levels = [_heading_level(b, body, len(blocks)) for b in blocks]
    order, columns, grid = _reading_order(blocks)
    rows = _grid_rows(blocks, grid) if grid else None
    table = {i for group in grid for i in group} if rows else set()
    headings = sum(1 for i, level in enumerate(levels) if level and i not in table)
    if not headings and columns < 2 and not rows:
        return None
    parts = []
    for index in order:
        block, level = blocks[index], levels[index]
        if index in table:
            if index == min(table):
                parts.append(markdown_tables.table(rows or []))
            continue
        if level:
            parts.append(f"{'#' * level} {block.text}")
        else:
            text = "\n".join(line.rstrip() for line in block.lines if line.strip())
            parts.append(_HASH_LINE.sub(r"\1\\#", text))
    return PageStructure("\n\n".join(parts), headings, columns, 1 if rows else 0)


def _body_size(blocks: list[Block]) -> float:
    total: Counter[float] = Counter()
    for block in blocks:
        total.update(block.chars)
    return total.most_common(1)[0][0]


def _heading_level(block: Block, body: float, count: int) -> int:
    """3, 4 or 5 for a heading block, 0 for body text."""
    text = block.text
    if (
        count < 2
        or len(block.lines) > HEADING_MAX_LINES
        or len(text) > HEADING_MAX_CHARS
        or not _LETTER.search(text)
    ):
        return 0
    ratio = block.chars.most_common(1)[0][0] / body if body > 0 and block.chars else 1.0
    if ratio >= 1.6:
        return 3
    if ratio >= 1.3:
        return 4
    if ratio >= HEADING_MIN_RATIO:
        return 5
    # Bold at body size (not smaller: figure labels): a heading only when short and not
    # a sentence.
    short = len(block.lines) == 1 and len(text) <= 80 and not text.endswith(".")
    if block.bold and short and ratio >= BOLD_MIN_RATIO:
        return 5
    return 0


def _reading_order(blocks: list[Block]) -> tuple[list[int], int, list[list[int]]]:
    """Block indexes in reading order, the number of columns found (1: none), and the
    groups of a grid of short cells (a table without rules) when the page has one.

    Columns are found from the paragraphs (narrow blocks of running text): their
    horizontal extents are the columns. Every other block lying within one column's
    extent belongs to it (a figure label, a short line); a block that crosses a gutter
    (a centred author line) or spans the page (a title) stays where it is, between the
    bands of columns above and below it."""
    left = min(b.x0 for b in blocks)
    right = max(b.x1 for b in blocks)
    width = right - left
    stream = list(range(len(blocks)))
    if width <= 0:
        return stream, 1, []
    narrow = [i for i in stream if (blocks[i].x1 - blocks[i].x0) < NARROW_SHARE * width]
    paragraphs = [i for i in narrow if _is_paragraph(blocks[i])]
    for extents in _columns(blocks, paragraphs, left, right):
        groups = [[i for i in paragraphs if _within(blocks[i], extent)] for extent in extents]
        if len(extents) >= 2 and all(groups) and _side_by_side(blocks, groups):
            break
    else:
        cells = _column_groups(blocks, narrow)
        if not paragraphs and len(cells) >= 2 and _side_by_side(blocks, cells):
            return stream, 1, cells  # short lines side by side: perhaps a table
        return stream, 1, []
    column_of = {}
    for i in narrow:
        inside = [n for n, extent in enumerate(extents) if _within(blocks[i], extent)]
        if inside:
            column_of[i] = inside[0]
    wide = sorted((i for i in stream if i not in column_of), key=lambda i: _middle(blocks[i]))
    middles = [_middle(blocks[i]) for i in wide]
    # Each column block belongs to the band after the last full-width block above it.
    bands: list[list[int]] = [[] for _ in range(len(wide) + 1)]
    for i in column_of:
        bands[bisect.bisect_right(middles, _middle(blocks[i]))].append(i)
    order: list[int] = []
    for number, band in enumerate(bands):
        order.extend(sorted(band, key=lambda i: (column_of[i], blocks[i].y0)))
        if number < len(wide):
            order.append(wide[number])
    return order, len(groups), []


def _columns(
    blocks: list[Block], paragraphs: list[int], left: float, right: float
) -> list[list[tuple[float, float]]]:
    """Candidate column extents, strict first: the page cut at its gutters, x ranges at least
    ``GUTTER_MIN_WIDTH`` wide that (almost) no paragraph line covers. A centred block
    that bridges two columns covers a gutter with a few lines only, so it does not hide
    it."""
    bins = max(int((right - left) / GUTTER_BIN) + 1, 1)
    cover = [0] * bins
    for i in paragraphs:
        for x0, _y0, x1, _y1 in blocks[i].boxes:
            for b in range(int((x0 - left) / GUTTER_BIN), int((x1 - left) / GUTTER_BIN) + 1):
                cover[min(b, bins - 1)] += 1
    if not paragraphs or max(cover) == 0:
        return []
    return [_cut(cover, max(cover) * share, left, right) for share in GUTTER_MAX_COVER]


def _cut(cover: list[int], quiet: float, left: float, right: float) -> list[tuple[float, float]]:
    """The extents between the gutters of a coverage histogram ([] when none, or when
    a column would be narrower than a quarter of the width)."""
    bins = len(cover)
    edges, run = [], 0
    for b, count in enumerate(cover):
        run = run + 1 if count <= quiet else 0
        inner = 0.15 * bins < b < 0.85 * bins
        ends = cover[min(b + 1, bins - 1)] > quiet  # the next x is covered again
        if run * GUTTER_BIN >= GUTTER_MIN_WIDTH and inner and count <= quiet and ends:
            edges.append((left + (b - run + 1) * GUTTER_BIN, left + (b + 1) * GUTTER_BIN))
    cuts = [left, *(x for gap in edges for x in gap), right]
    extents = [(cuts[n], cuts[n + 1]) for n in range(0, len(cuts), 2)]
    width = right - left
    if any(x1 - x0 < COLUMN_MIN_SHARE * width for x0, x1 in extents):
        return []
    return extents


def _within(block: Block, extent: tuple[float, float]) -> bool:
    return block.x0 >= extent[0] - GUTTER_BIN and block.x1 <= extent[1] + GUTTER_BIN


def _is_paragraph(block: Block) -> bool:
    """Running text: two lines at least, of ``COLUMN_MIN_LINE_CHARS`` on average."""
    lines = [line.strip() for line in block.lines if line.strip()]
    average = sum(len(line) for line in lines) / max(len(lines), 1)
    return len(lines) >= 2 and average >= COLUMN_MIN_LINE_CHARS


def _grid_rows(blocks: list[Block], groups: list[list[int]]) -> list[list[str]] | None:
    """The rows of a table drawn without rules: the groups are its columns, lines at
    the same height its rows. None unless it looks like one: 2 rows and 2 columns at
    least, ``GRID_MIN_FILLED`` of the cells filled, every row with 2 cells or more."""
    cells = [
        (column, (box[1] + box[3]) / 2, box[3] - box[1], text.strip())
        for column, group in enumerate(groups)
        for i in group
        for text, box in zip(blocks[i].lines, blocks[i].boxes, strict=True)
        if text.strip()
    ]
    if len(cells) > GRID_MAX_LINES:
        return None
    cells.sort(key=lambda cell: cell[1])
    heights = sorted(cell[2] for cell in cells)
    tolerance = heights[len(heights) // 2] / 2
    rows: list[dict[int, str]] = []
    row_middle = float("-inf")
    for column, middle, _height, text in cells:
        if middle - row_middle > tolerance:
            rows.append({})
            row_middle = middle
        row = rows[-1]
        row[column] = f"{row[column]} {text}" if column in row else text
    filled = sum(len(row) for row in rows)
    if (
        len(rows) < 2
        or filled < GRID_MIN_FILLED * len(rows) * len(groups)
        or any(len(row) < 2 for row in rows)
    ):
        return None
    return [[row.get(column, "") for column in range(len(groups))] for row in rows]


def _column_groups(blocks: list[Block], narrow: list[int]) -> list[list[int]]:
    """Narrow blocks grouped by overlapping horizontal extent, left to right."""
    groups: list[list[int]] = []
    extent: list[tuple[float, float]] = []
    for i in sorted(narrow, key=lambda i: blocks[i].x0):
        block = blocks[i]
        if extent and block.x0 < extent[-1][1]:
            groups[-1].append(i)
            extent[-1] = (extent[-1][0], max(extent[-1][1], block.x1))
        else:
            groups.append([i])
            extent.append((block.x0, block.x1))
    return groups


def _side_by_side(blocks: list[Block], groups: list[list[int]]) -> bool:
    """Whether neighbouring groups share a height somewhere (columns, not indents)."""
    for first, second in itertools.pairwise(groups):
        if not any(
            blocks[a].y0 < blocks[b].y1 and blocks[b].y0 < blocks[a].y1
            for a in first
            for b in second
        ):
            return False
    return True


def _middle(block: Block) -> float:
    return (block.y0 + block.y1) / 2
