"""DOCX: our own markdown on python-docx (docstrange's DOCXProcessor loses content).

docstrange 1.1.6's processors for the office formats lose content (measured on real
files): DOCX tables are cut to 20 rows and moved after every paragraph, and headers,
footers, nested tables and text boxes are dropped. This walks the same file with
python-docx and writes the markdown docstrange would write when nothing is lost: ``#``
headings, lists, and ``| a | b |`` tables whose first row is the header
(markdown_tables.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..domain import Extraction, ParseJob
from . import docstrange
from .markdown_tables import Office, table

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def read(job: ParseJob, model_dir: Path) -> Extraction:
    """The registry's reader for .docx: our walker, docstrange's processor for a file not
    named for its type."""
    return docstrange.walk_or_convert(job, "python-docx", lambda j: docx_markdown(j.path))


def docx_markdown(path: str) -> Office:
    """Paragraphs and tables in document order, whole tables, headers and footers."""
    import docx

    document = docx.Document(path)
    body = _docx_joined(_docx_blocks(document, document.element.body, _Numbering(document)))
    headers, footers = _docx_margins(document)
    parts = [f"Header: {text}" for text in headers] + [body]
    parts += [f"Footer: {text}" for text in footers]
    metadata = {
        "paragraph_count": len(document.paragraphs),
        "section_count": len(document.sections),
        "table_count": len(document.tables),
        "file_type": "docx",
        "extractor": "python-docx",
    }
    return Office(
        "\n\n".join(p for p in parts if p.strip()), metadata, warnings=_docx_losses(document)
    )


def _docx_joined(blocks: Iterable[tuple[str, str | None]]) -> str:
    """Blocks separated by a blank line, except consecutive items of one list: a line
    each, so that the list stays one list (a blank line ends it in the html renderer,
    which would make every item a list of its own, each numbered from 1).

    A block's list key is None for a non-item, its list's ``numId`` for a top-level
    item (another list starts after a blank line) and "" for a nested item (it
    belongs to the list above it, even when its numbering is another ``numId``)."""
    out: list[str] = []
    open_list: str | None = None
    for text, key in blocks:
        if out:
            same = open_list is not None and key is not None and key in ("", open_list)
            out.append("\n" if same else "\n\n")
        out.append(text)
        open_list = None if key is None else (open_list if key == "" else key)
    return "".join(out)


def _docx_losses(document: Any) -> list[str]:
    """What the walker does not read, said rather than dropped silently."""
    warnings = []
    images = len(document.inline_shapes)
    if images:
        warnings.append(f"docx: {images} image(s) not extracted (their text is not OCRed)")
    names = {str(part.partname) for part in document.part.package.iter_parts()}
    for partname, what in (
        ("/word/comments.xml", "comments"),
        ("/word/footnotes.xml", "footnotes"),
        ("/word/endnotes.xml", "endnotes"),
    ):
        if partname in names:
            warnings.append(f"docx: {what} are not extracted")
    return warnings


def _docx_blocks(
    document: Any, parent: Any, numbering: _Numbering
) -> Iterator[tuple[str, str | None]]:
    """Each block's markdown and its list key (``_docx_joined``)."""
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    for child in parent.iterchildren():
        if child.tag == f"{_W}p":
            text, item = _docx_paragraph(Paragraph(child, document), numbering)
            if text:
                yield text, item
        elif child.tag == f"{_W}tbl":
            rows = _docx_rows(Table(child, document))
            if rows:
                yield table(rows), None
        elif child.tag == f"{_W}sdt":  # content controls wrap ordinary blocks
            content = child.find(f"{_W}sdtContent")
            if content is not None:
                yield from _docx_blocks(document, content, numbering)


def _docx_paragraph(paragraph: Any, numbering: _Numbering) -> tuple[str, str | None]:
    """A paragraph as markdown and its list key: heading level from its style, list
    items as ``- `` or ``N. `` (numbering.xml), nested levels indented."""
    text = " ".join(_paragraph_text(paragraph).split())
    boxes = [
        " ".join("".join(t.text or "" for t in p.iter(f"{_W}t")).split())
        for p in paragraph._p.iter(f"{_W}txbxContent")
    ]
    boxes = [box for box in boxes if box]
    if not text:
        return "\n\n".join(boxes), None
    style = (paragraph.style.name if paragraph.style is not None else "") or ""
    key: str | None = None
    if style == "Title":
        text = f"# {text}"
    elif style.startswith("Heading"):
        level = style.removeprefix("Heading").strip()
        text = f"{'#' * min(int(level), 6)} {text}" if level.isdigit() else f"## {text}"
    elif (found := numbering.marker(paragraph)) is not None:
        marker, key = found
        text = marker + text
    elif style.startswith("List"):
        text, key = f"- {text}", style
    return "\n\n".join([text, *boxes]), None if boxes else key


# numFmt values that are not numbers; every other format (decimal, lowerLetter,
# upperRoman, ...) is an ordered list, written with arabic numbers as markdown can.
_UNORDERED_FORMATS = frozenset({"bullet", "none", ""})
_LIST_STYLE_LEVEL = re.compile(r"^List (?:Bullet|Number) (\d)$")


class _Numbering:
    """docx list numbering: each list's (``numId``) format per level and its counters.

    A paragraph is a list item when it, or its style (python-docx's "List Number" and
    "List Bullet" styles carry the numbering), has a ``numPr`` with a non-zero
    ``numId``. Counters run per ``numId`` (a new ``w:num`` is how Word restarts a list),
    start at the level's ``start`` (or the ``num``'s ``startOverride``), and an item
    resets the deeper levels of its list, as Word's default ``lvlRestart`` does.
    """

    def __init__(self, document: Any) -> None:
        self.formats: dict[tuple[str, int], tuple[str, int]] = {}
        self.counters: dict[str, dict[int, int]] = {}
        self.style_numbering: dict[str, tuple[str | None, int | None]] = {}
        root = _numbering_root(document)
        if root is None:
            return
        abstract: dict[str, dict[int, tuple[str, int]]] = {}
        for definition in root.iterchildren(f"{_W}abstractNum"):
            levels = abstract.setdefault(_val(definition, "abstractNumId") or "", {})
            for lvl in definition.iterchildren(f"{_W}lvl"):
                levels[_int(_val(lvl, "ilvl"), 0)] = _level_format(lvl)
        for num in root.iterchildren(f"{_W}num"):
            num_id = _val(num, "numId") or ""
            base = num.find(f"{_W}abstractNumId")
            levels = dict(abstract.get(_val(base, "val") or "", {}) if base is not None else {})
            for override in num.iterchildren(f"{_W}lvlOverride"):
                ilvl = _int(_val(override, "ilvl"), 0)
                lvl = override.find(f"{_W}lvl")
                if lvl is not None:
                    levels[ilvl] = _level_format(lvl)
                start = override.find(f"{_W}startOverride")
                if start is not None:
                    fmt = levels.get(ilvl, ("decimal", 1))[0]
                    levels[ilvl] = (fmt, _int(_val(start, "val"), 1))
            for ilvl, value in levels.items():
                self.formats[(num_id, ilvl)] = value

    def marker(self, paragraph: Any) -> tuple[str, str] | None:
        """``- `` or ``N. `` (indented four spaces per level) and the list key
        (``_docx_joined``), or None: the paragraph is not numbered."""
        num_id, ilvl = _num_pr(paragraph._p.find(f"{_W}pPr/{_W}numPr"))
        depth = ilvl
        if num_id is None and paragraph.style is not None:
            num_id, ilvl = self._style_num_pr(paragraph.style)
            depth = ilvl
            if ilvl is None and (m := _LIST_STYLE_LEVEL.match(paragraph.style.name or "")):
                depth = int(m.group(1)) - 1  # "List Number 2": its own one-level list
        if num_id is None or num_id == "0" or (num_id, ilvl or 0) not in self.formats:
            return None
        level = ilvl or 0
        fmt, start = self.formats[(num_id, level)]
        counters = self.counters.setdefault(num_id, {})
        for deeper in [n for n in counters if n > level]:
            del counters[deeper]
        counters[level] = counters.get(level, start - 1) + 1
        depth = min(depth or 0, 8)
        key = "" if depth else num_id
        if fmt in _UNORDERED_FORMATS:
            return "    " * depth + "- ", key
        return "    " * depth + f"{counters[level]}. ", key

    def _style_num_pr(self, style: Any) -> tuple[str | None, int | None]:
        """The numPr a paragraph style gives (through its ``basedOn`` chain)."""
        key = style.style_id
        if key not in self.style_numbering:
            found: tuple[str | None, int | None] = (None, None)
            seen = set()
            while style is not None and style.style_id not in seen:
                seen.add(style.style_id)
                num_id, ilvl = _num_pr(style.element.find(f"{_W}pPr/{_W}numPr"))
                if num_id is not None:
                    found = (num_id, ilvl)
                    break
                style = style.base_style
            self.style_numbering[key] = found
        return self.style_numbering[key]


def _numbering_root(document: Any) -> Any:
    """numbering.xml's root element, or None when the document has no numbering part."""
    from docx.opc.constants import RELATIONSHIP_TYPE

    try:
        return document.part.part_related_by(RELATIONSHIP_TYPE.NUMBERING).element
    except (KeyError, AttributeError):
        return None


def _level_format(lvl: Any) -> tuple[str, int]:
    """A ``w:lvl``'s numFmt (the first, also inside mc:AlternateContent) and start."""
    fmt = next(lvl.iter(f"{_W}numFmt"), None)
    start = lvl.find(f"{_W}start")
    return (_val(fmt, "val") or "decimal") if fmt is not None else "decimal", _int(
        _val(start, "val") if start is not None else None, 1
    )


def _num_pr(num_pr: Any) -> tuple[str | None, int | None]:
    if num_pr is None:
        return None, None
    num_id, ilvl = num_pr.find(f"{_W}numId"), num_pr.find(f"{_W}ilvl")
    return (
        _val(num_id, "val") if num_id is not None else None,
        _int(_val(ilvl, "val"), 0) if ilvl is not None else None,
    )


def _val(element: Any, name: str) -> str | None:
    return element.get(f"{_W}{name}")


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _paragraph_text(paragraph: Any) -> str:
    """Run and hyperlink text (python-docx's ``text`` skips hyperlinks before 1.0)."""
    pieces = []
    for node in paragraph._p.iter(f"{_W}t", f"{_W}tab", f"{_W}br"):
        if node.tag == f"{_W}t":
            # text inside a text box is reported with the box, not twice
            if not any(a.tag == f"{_W}txbxContent" for a in node.iterancestors()):
                pieces.append(node.text or "")
        else:
            pieces.append(" ")
    return "".join(pieces)


def _docx_rows(docx_table: Any) -> list[list[str]]:
    """Every row, one cell per grid column: a merged cell's text once, in its top-left
    grid cell, and empty cells for the rest of the merge, horizontal (``gridSpan``) or
    vertical (``vMerge``), so the columns stay aligned and no text is duplicated; a
    nested table's rows inside its cell."""
    from docx.table import _Cell

    # A span is at most the table's grid width (a hostile gridSpan of 10^9 must not
    # build a row of 10^9 cells).
    grid = docx_table._tbl.tblGrid
    limit = max(len(grid.gridCol_lst) if grid is not None else 0, 1)
    rows = []
    for row in docx_table.rows:
        cells = [""] * min(int(getattr(row, "grid_cols_before", 0) or 0), limit)
        for tc in row._tr.tc_lst:
            span = min(max(int(tc.grid_span or 1), 1), limit)
            text = "" if tc.vMerge == "continue" else _docx_cell(_Cell(tc, docx_table))
            cells += [text] + [""] * (span - 1)
        rows.append(cells)
    return rows


def _docx_cell(table_cell: Any) -> str:
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    lines = []
    for child in table_cell._tc.iterchildren():
        if child.tag == f"{_W}p":
            lines.append(_paragraph_text(Paragraph(child, table_cell)))
        elif child.tag == f"{_W}tbl":
            for nested in _docx_rows(Table(child, table_cell)):
                lines.append(" / ".join(value.replace("<br>", " ") for value in nested))
    return "\n".join(line for line in lines if line.strip())


def _docx_margins(document: Any) -> tuple[list[str], list[str]]:
    """Distinct header and footer texts of every section, in order."""
    headers: list[str] = []
    footers: list[str] = []
    for section in document.sections:
        for part, found in ((section.header, headers), (section.footer, footers)):
            if part.is_linked_to_previous and found:
                continue
            text = " ".join(
                " ".join(_paragraph_text(p).split()) for p in part.paragraphs if p.text.strip()
            )
            for rows in (_docx_rows(t) for t in part.tables):
                text = " ".join([text, *(" ".join(r) for r in rows)]).strip()
            if text and text not in found:
                found.append(text)
    return headers, footers
