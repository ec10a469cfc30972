"""OpenDocument text, spreadsheets and presentations (.odt, .ods, .odp), from content.xml.

No ODF library is needed: the container is a zip (checked by server/detection.py like OOXML)
and its ``content.xml`` is parsed with the hardened XML parser. The markdown follows the
OOXML walkers' (docx.py, pptx.py, xlsx.py): ``#`` headings from ``text:h`` outline
levels, ``- `` list items (nested ones indented), whole tables with the first row as the header,
``## Sheet: name`` per spreadsheet table and ``## Slide N`` per presentation page with
its speaker notes as ``Notes: ...``.

Spreadsheets repeat rows and cells by count (``number-rows-repeated``, which LibreOffice
writes as a million empty rows at the end of every sheet): empty repeats are never
expanded, repeated content counts against --doc-max-cells before it is built.
Not extracted (said in a warning): images, footnotes and endnotes, comments.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..domain import DocumentRejected, Extraction, ParseJob
from ..worker.limits import CELLS_FLAG
from . import markdown_tables
from .common import localname, member, parse_xml, words

_TEXT = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
_TABLE = "urn:oasis:names:tc:opendocument:xmlns:table:1.0"
_DRAW = "urn:oasis:names:tc:opendocument:xmlns:drawing:1.0"
_OFFICE = "urn:oasis:names:tc:opendocument:xmlns:office:1.0"
_PRESENTATION = "urn:oasis:names:tc:opendocument:xmlns:presentation:1.0"
# Elements whose text is not the document's running text.
_SKIPPED = frozenset({"note", "annotation", "tracked-changes", "sequence-decls"})
_MAX_REPEAT = 1_048_576


def read_odt(job: ParseJob, model_dir: Path) -> Extraction:
    body, losses = _body(job, "text")
    blocks = list(_blocks(body, 0, _Budget(job.xlsx_max_cells)))
    return _extraction(job, "\n\n".join(b for b in blocks if b), losses)


def read_ods(job: ParseJob, model_dir: Path) -> Extraction:
    body, losses = _body(job, "spreadsheet")
    parts, names, warnings = [], [], []
    budget = _Budget(job.xlsx_max_cells)
    for sheet in body.iter(f"{{{_TABLE}}}table"):
        name = sheet.get(f"{{{_TABLE}}}name") or f"Sheet{len(names) + 1}"
        names.append(name)
        rows = markdown_tables.trimmed(_table_rows(sheet, budget, name))
        if not rows:
            warnings.append(f"sheet {name!r} is empty and was skipped")
            continue
        parts.append(f"## Sheet: {name}\n\n{markdown_tables.table(rows)}")
    extraction = _extraction(job, "\n\n".join(parts), losses + warnings)
    extraction.metadata.update(sheet_count=len(names), sheet_names=names)
    extraction.sheet_count = len(names)
    return extraction


def read_odp(job: ParseJob, model_dir: Path) -> Extraction:
    body, losses = _body(job, "presentation")
    parts: list[str] = []
    pages = list(body.iter(f"{{{_DRAW}}}page"))
    budget = _Budget(job.xlsx_max_cells)
    for number, page in enumerate(pages, start=1):
        parts.append(f"## Slide {number}")
        notes = None
        for child in page:
            if localname(child) == "notes":
                notes = child
                continue
            parts.extend(b for b in _blocks(child, 0, budget) if b)
        if notes is not None:
            text = words(" ".join(b for b in _blocks(notes, 0, budget) if b))
            if text:
                parts.append(f"Notes: {text}")
    extraction = _extraction(job, "\n\n".join(parts), losses)
    extraction.slide_count = len(pages)
    extraction.metadata["slide_count"] = len(pages)
    return extraction


def _body(job: ParseJob, kind: str) -> tuple[Any, list[str]]:
    """The ``office:<kind>`` element of content.xml and what the reader will not read."""
    try:
        with zipfile.ZipFile(job.path) as archive:
            content = member(archive, "content.xml", f"od{kind[0]} file")
    except zipfile.BadZipFile as exc:
        raise DocumentRejected("content", f"is not a valid ODF file: {exc}") from exc
    root = parse_xml(content, "content.xml")
    body = root.find(f"{{{_OFFICE}}}body/{{{_OFFICE}}}{kind}")
    if body is None:
        raise DocumentRejected("content", f"content.xml has no office:{kind} body")
    losses = []
    images = sum(1 for _ in body.iter(f"{{{_DRAW}}}image"))
    if images:
        losses.append(f"od{kind[0]}: {images} image(s) not extracted (not OCRed)")
    if next(body.iter(f"{{{_TEXT}}}note"), None) is not None:
        losses.append(f"od{kind[0]}: footnotes and endnotes are not extracted")
    if next(body.iter(f"{{{_OFFICE}}}annotation"), None) is not None:
        losses.append(f"od{kind[0]}: comments are not extracted")
    return body, losses


def _extraction(job: ParseJob, markdown: str, warnings: list[str]) -> Extraction:
    kind = job.doc_type
    metadata = {"file_type": kind, "extractor": "zopilot-odf"}
    return Extraction(markdown, "zopilot:odf", metadata, warnings=warnings)


def _blocks(element: Any, depth: int, budget: _Budget) -> Iterator[str]:
    """The markdown blocks of ``element``'s children, in document order."""
    for child in element:
        name = localname(child)
        if name in _SKIPPED or not name:
            continue
        if name == "h":
            level = _int(child.get(f"{{{_TEXT}}}outline-level"), 1)
            text = _text(child)
            if text:
                yield f"{'#' * min(max(level, 1), 6)} {text}"
        elif name == "p":
            text = _text(child)
            if text:
                yield text
            yield from _frames(child, depth, budget)
        elif name == "list":
            yield "\n".join(_list_items(child, depth))
        elif name == "table":
            rows = markdown_tables.trimmed(_table_rows(child, budget, "a table"))
            if rows:
                yield markdown_tables.table(rows)
        else:  # sections, frames, text boxes, shapes, index bodies: their content
            yield from _blocks(child, depth, budget)


def _frames(paragraph: Any, depth: int, budget: _Budget) -> Iterator[str]:
    """Text boxes anchored in a paragraph (their text is not the paragraph's)."""
    for frame in paragraph.iter(f"{{{_DRAW}}}text-box"):
        yield from _blocks(frame, depth, budget)


def _list_items(element: Any, depth: int) -> Iterator[str]:
    for item in element:
        if localname(item) not in ("list-item", "list-header"):
            continue
        first = True
        for child in item:
            name = localname(child)
            if name == "list":
                yield from _list_items(child, depth + 1)
            elif name in ("p", "h"):
                text = _text(child)
                if text:
                    marker = "- " if first else "  "
                    yield "    " * min(depth, 8) + marker + text
                    first = False


def _text(element: Any) -> str:
    """A paragraph's text: spans and links included, ``text:s`` / tabs / breaks as
    spaces, notes, annotations and anchored frames left out."""
    pieces: list[str] = []

    def walk(node: Any) -> None:
        if node.text:
            pieces.append(node.text)
        for child in node:
            name = localname(child)
            if name == "s":
                pieces.append(" " * min(_int(child.get(f"{{{_TEXT}}}c"), 1), 64))
            elif name in ("tab", "line-break"):
                pieces.append(" ")
            elif name not in _SKIPPED and name not in ("frame", "custom-shape"):
                walk(child)
            if child.tail:
                pieces.append(child.tail)

    walk(element)
    return words("".join(pieces))


class _Budget:
    """Cells a spreadsheet may build (--doc-max-cells; 0 = no limit)."""

    def __init__(self, max_cells: int) -> None:
        self.max_cells = max_cells
        self.cells = 0

    def spend(self, cells: int, sheet: str) -> None:
        self.cells += cells
        if self.max_cells and self.cells > self.max_cells:
            raise DocumentRejected(
                "content",
                f"the spreadsheet spans more than {self.max_cells} cells (at sheet "
                f"{sheet[:40]!r}); the limit is {CELLS_FLAG} {self.max_cells}",
            )


def _table_rows(table: Any, budget: _Budget, sheet: str) -> list[list[str]]:
    """A table's rows, repeats expanded only where they hold text."""
    rows: list[list[str]] = []
    for row in table.iter(f"{{{_TABLE}}}table-row"):
        if _owner(row) is not table:
            continue  # a row of a nested table
        cells: list[str] = []
        pending = 0  # empty cells not yet written (trailing ones never are)
        for cell in row:
            if localname(cell) not in ("table-cell", "covered-table-cell"):
                continue
            repeat = min(_int(cell.get(f"{{{_TABLE}}}number-columns-repeated"), 1), _MAX_REPEAT)
            text = _cell_text(cell)
            if not text:
                pending += repeat
                continue
            budget.spend(pending + repeat, sheet)
            cells += [""] * pending + [text] * repeat
            pending = 0
        if not cells:
            continue
        times = min(_int(row.get(f"{{{_TABLE}}}number-rows-repeated"), 1), _MAX_REPEAT)
        budget.spend(len(cells) * (times - 1), sheet)
        rows.extend(list(cells) for _ in range(times))
    return rows


def _owner(row: Any) -> Any:
    parent = row.getparent()
    while parent is not None and localname(parent) != "table":
        parent = parent.getparent()
    return parent


def _cell_text(cell: Any) -> str:
    lines = []
    for child in cell:
        name = localname(child)
        if name in ("p", "h"):
            lines.append(_text(child))
        elif name == "list":
            lines.extend(_list_items(child, 0))
        elif name == "table":
            for nested in _table_rows(child, _Budget(0), ""):
                lines.append(" / ".join(nested))
    return "\n".join(line for line in lines if line)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
