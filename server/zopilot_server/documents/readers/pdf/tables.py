"""A PDF page's ruled tables as markdown tables, in their place in the page's text.

Tables are found by PyMuPDF's ``find_tables`` with its line strategy; their cells are
filled from the page's own words (see ``pdf_page_text``).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

from .. import markdown_tables

# Table detection is skipped when the page's rules could form more grid cells than
# this (distinct horizontal rule positions x distinct vertical ones): PyMuPDF's finder
# grows faster than the cell count (measured: 40x40 rules 0.27 s, 80x80 2 s), and
# graph paper or a vector chart is no table. A real table page stays far below (70
# rows x 20 columns is 1400); the page's text is kept as lines, with a warning.
PDF_TABLE_MAX_GRID = 3000
# A header row drawn above a table's top rule lies at most this many of its own line
# heights above the rule.
HEADER_GAP_LINES = 1.5
HEADER_MIN_GAP = 6.0  # points between the words of neighbouring header cells


def pdf_page_text(
    page: Any, number: int, warnings: list[str], textpage: Any = None
) -> tuple[str, int]:
    """A page's text in reading order, each ruled table in it as a markdown table.

    Tables are PyMuPDF's ``find_tables`` with its line strategy (the table's drawn
    rules), so a page without both horizontal and vertical rules (plain text) is never
    searched and reads exactly as ``get_text()``. A table (2 rows and 2 columns at
    least: a frame round a paragraph is not a table) replaces the text lines whose
    centre lies in it, at the place of the first of them in the text stream. Those
    lines' words fill the cells they lie in (PyMuPDF's own cell text splits ``1.50``
    into ``1 50`` and ``.``); a merged cell's text is given once; a word of those lines
    in no cell follows the table as a text line, so no text is lost or repeated.
    """
    drawings = [] if page.rotation else page.get_cdrawings()
    grid = _rule_grid(drawings)
    if not grid:  # no horizontal or no vertical rule: nothing the line strategy could find
        return page.get_text(textpage=textpage), 0
    if grid > PDF_TABLE_MAX_GRID:
        warnings.append(
            f"pdf page {number}: its rules could form {grid} table cells (over "
            f"{PDF_TABLE_MAX_GRID}); tables were not looked for, their text is given as lines"
        )
        return page.get_text(textpage=textpage), 0
    try:
        tables = _pdf_tables(page, drawings)
    except Exception:  # noqa: BLE001 - a table-finder failure must not lose the text
        warnings.append(f"pdf page {number}: table detection failed; its text is given as lines")
        return page.get_text(textpage=textpage), 0
    if not tables:
        return page.get_text(textpage=textpage), 0
    if textpage is None:
        import pymupdf

        textpage = page.get_textpage(flags=pymupdf.TEXTFLAGS_TEXT)
    # Each text line either stays a line (None) or belongs to the table holding its centre.
    owner: dict[tuple[int, int], int | None] = {}
    stream: list[tuple[str, tuple[int, int]]] = []
    boxes: dict[tuple[int, int], _Box] = {}
    for block in page.get_text("dict", textpage=textpage)["blocks"]:
        for index, line in enumerate(block.get("lines", ())):
            x0, y0, x1, y1 = line["bbox"]
            key = (block["number"], index)
            owner[key] = _containing(tables, (x0 + x1) / 2, (y0 + y1) / 2)
            boxes[key] = (x0, y0, x1, y1)
            stream.append(("".join(span["text"] for span in line["spans"]), key))
    words = page.get_text("words", textpage=textpage)
    rows, stray = _fill_cells(tables, owner, words)
    for inside, keys, header in _headers_above(tables, owner, boxes, words):
        owner.update(dict.fromkeys(keys, inside))
        rows[inside].insert(0, header)
    pieces: list[str] = []
    placed: set[int] = set()
    for text, key in stream:
        inside = owner[key]
        if inside is None:
            pieces.append(text)
        elif inside not in placed:
            placed.add(inside)
            pieces.append(f"\n{markdown_tables.table(rows[inside])}\n")
            if stray[inside]:
                pieces.append(" ".join(stray[inside]))
    return "\n".join(pieces), len(placed)


_Box = tuple[float, float, float, float]


def _rule_grid(drawings: list[dict[str, Any]]) -> int:
    """Distinct horizontal rule positions times distinct vertical ones (rounded to a
    point): an upper bound on the grid cells PyMuPDF's line strategy could build.
    Lines count by their direction, rectangles and quads by their four sides, any
    other path (curves) by its bounding box, as the finder may use those of filled
    paths."""
    rows: set[int] = set()
    columns: set[int] = set()

    def box(x0: float, y0: float, x1: float, y1: float) -> None:
        rows.update((round(y0), round(y1)))
        columns.update((round(x0), round(x1)))

    for drawing in drawings:
        for item in drawing.get("items", ()):
            kind = item[0]
            if kind == "l":
                (x0, y0), (x1, y1) = item[1], item[2]
                if abs(y0 - y1) < 1:
                    rows.add(round(y0))
                elif abs(x0 - x1) < 1:
                    columns.add(round(x0))
            elif kind == "re":
                box(*item[1])
            elif kind == "qu":
                xs, ys = [p[0] for p in item[1]], [p[1] for p in item[1]]
                box(min(xs), min(ys), max(xs), max(ys))
            else:
                box(*drawing["rect"])
    return len(rows) * len(columns)


_Grid = list[list["_Box | None"]]


def _pdf_tables(page: Any, drawings: list[dict[str, Any]]) -> list[tuple[_Box, _Grid]]:
    """The page's ruled tables: bounding box and the box of every cell, row by row
    (None where a merged cell covers it); the first row is the header."""
    # Tables are found from drawn rules, so they lie inside the drawings' bounding box:
    # clipped to it, PyMuPDF reads the characters of that region only.
    drawn = [item["rect"] for item in drawings]
    clip = (
        min(r[0] for r in drawn) - 1,
        min(r[1] for r in drawn) - 1,
        max(r[2] for r in drawn) + 1,
        max(r[3] for r in drawn) + 1,
    )
    found = page.find_tables(clip=clip, **_find_tables_options())
    # ``candidate.header`` would also look for a header row above the rules, at a
    # third of the whole cost: _headers_above does it from the words already read.
    return [
        (tuple(candidate.bbox), [list(row.cells) for row in candidate.rows])
        for candidate in found.tables
        if candidate.row_count >= 2 and candidate.col_count >= 2
    ]


def _fill_cells(
    tables: list[tuple[_Box, _Grid]],
    owner: dict[tuple[int, int], int | None],
    words: list[tuple[Any, ...]],
) -> tuple[list[list[list[str]]], list[list[str]]]:
    """Every table's cell texts (a cell's lines joined by a line break) from the words
    of the text lines it owns, and each table's words that lie in no cell."""
    lines: dict[tuple[int, int, int, int, int], list[str]] = {}
    stray: list[list[str]] = [[] for _ in tables]
    for x0, y0, x1, y1, word, block, line, _number in words:
        inside = owner.get((block, line))
        if inside is None:
            continue
        x, y = (x0 + x1) / 2, (y0 + y1) / 2
        for r, row in enumerate(tables[inside][1]):
            c = next((c for c, box in enumerate(row) if box and _holds(box, x, y)), None)
            if c is not None:
                lines.setdefault((inside, r, c, block, line), []).append(word)
                break
        else:
            stray[inside].append(word)
    rows = [[[""] * len(row) for row in grid] for _box, grid in tables]
    for (inside, r, c, _block, _line), found in lines.items():  # insertion: stream order
        rows[inside][r][c] = "\n".join(filter(None, [rows[inside][r][c], " ".join(found)]))
    return rows, stray


def _headers_above(
    tables: list[tuple[_Box, _Grid]],
    owner: dict[tuple[int, int], int | None],
    boxes: dict[tuple[int, int], _Box],
    words: list[tuple[Any, ...]],
) -> list[tuple[int, list[tuple[int, int]], list[str]]]:
    """Header rows drawn above a table's top rule: for each table, the text lines right
    above it (their bottom within ``HEADER_GAP_LINES`` line heights of the rule, inside
    the table's width, at the height of the closest one) whose every word lies over one
    of the table's columns, in two columns at least. Returns each such row's table, its
    lines and its cells."""
    by_line: dict[tuple[int, int], list[tuple[float, float, str]]] = {}
    for x0, _y0, x1, _y1, word, block, line, _number in words:
        by_line.setdefault((block, line), []).append((x0, x1, word))
    taken: set[tuple[int, int]] = set()
    found = []
    for number, ((tx0, ty0, tx1, _ty1), grid) in enumerate(tables):
        columns = _column_spans(grid)
        above = [
            key
            for key, (x0, y0, x1, y1) in boxes.items()
            if owner.get(key) is None
            and key not in taken
            and ty0 - HEADER_GAP_LINES * (y1 - y0) <= y1 <= ty0 + 2
            and x0 >= tx0 - 2
            and x1 <= tx1 + 2
        ]
        if not above or not columns:
            continue
        closest = boxes[max(above, key=lambda k: boxes[k][3])]
        row = [k for k in above if abs(boxes[k][3] - closest[3]) <= (closest[3] - closest[1]) / 2]
        cells = _header_cells(sorted(w for k in row for w in by_line.get(k, ())), columns)
        if cells is not None:
            taken.update(row)
            found.append((number, row, cells))
    return found


def _header_cells(
    line: list[tuple[float, float, str]], columns: list[tuple[float, float]]
) -> list[str] | None:
    """A line's words as one cell per column, or None unless it reads as a header row:
    every word over a column, two columns used, and a wide gap (``HEADER_MIN_GAP``
    points and twice the widest gap inside a cell) wherever the words pass from one
    column to the next (a caption or a sentence flows across with ordinary spaces)."""
    cells: list[list[str]] = [[] for _ in columns]
    placed: list[tuple[int, float, float]] = []
    for x0, x1, word in line:
        middle = (x0 + x1) / 2
        column = next((c for c, (a, b) in enumerate(columns) if a <= middle <= b), None)
        if column is None:
            return None
        cells[column].append(word)
        placed.append((column, x0, x1))
    inner = [b[1] - a[2] for a, b in itertools.pairwise(placed) if a[0] == b[0]]
    across = [b[1] - a[2] for a, b in itertools.pairwise(placed) if a[0] != b[0]]
    if sum(1 for c in cells if c) < 2:
        return None
    if min(across) < max(HEADER_MIN_GAP, 2 * max(inner, default=0.0)):
        return None
    return [" ".join(c) for c in cells]


def _column_spans(grid: _Grid) -> list[tuple[float, float]]:
    """Each grid column's horizontal extent, from the cells that have a box."""
    width = max((len(row) for row in grid), default=0)
    spans = []
    for c in range(width):
        cells = [row[c] for row in grid if c < len(row) and row[c] is not None]
        if not cells:
            return []
        spans.append((min(b[0] for b in cells), max(b[2] for b in cells)))  # type: ignore[index]
    return spans


def _holds(box: _Box, x: float, y: float) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def _containing(tables: list[tuple[_Box, _Grid]], x: float, y: float) -> int | None:
    return next((n for n, (box, _rows) in enumerate(tables) if _holds(box, x, y)), None)


@functools.lru_cache(maxsize=1)
def _find_tables_options() -> dict[str, Any]:
    """PyMuPDF >= 2.0 gates ``find_tables`` by its layout model by default (about a
    second a page on CPU); the line strategy alone takes milliseconds."""
    import inspect

    import pymupdf.table

    finder = getattr(pymupdf.table, "find_tables", None)  # Page.find_tables(**kwargs)
    parameters = inspect.signature(finder).parameters if finder is not None else {}
    return {"use_layout": False} if "use_layout" in parameters else {}
