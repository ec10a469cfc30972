"""Our own markdown for DOCX, PPTX, XLSX and CSV, on the libraries docstrange uses.

docstrange 1.1.6's processors for these formats lose content (measured on real files):
DOCX tables are cut to 20 rows and moved after every paragraph, and headers, footers,
nested tables and text boxes are dropped; PPTX tables, group shapes and charts are
dropped; XLSX/CSV go through pandas, which eats a one-row sheet as its header, invents
``Unnamed: 0`` headers, turns ``NA`` / ``N/A`` / ``NULL`` into empty cells and ``17``
into ``17.0``. The functions here walk the same files with python-docx, python-pptx,
openpyxl and Python's csv module and write the markdown docstrange would write when
nothing is lost: ``#`` headings, ``## Slide N`` / ``## Sheet: name`` sections and
``| a | b |`` tables whose first row is the header.

Table cells are escaped for markdown: ``|`` as ``\\|`` and a line break as ``<br>``;
outputs.py turns them back into the cell's text for csv and text.
"""

from __future__ import annotations

import csv
import datetime
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

CSV_SNIFF_BYTES = 64 * 1024
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


@dataclass
class Office:
    """Markdown for one document plus the counts and warnings the client sees."""

    markdown: str
    metadata: dict[str, Any] = field(default_factory=dict)
    sheet_count: int = 0
    slide_count: int = 0
    warnings: list[str] = field(default_factory=list)


def cell(text: str) -> str:
    """One table cell's text, escaped so it cannot break the markdown row."""
    lines = [" ".join(line.split()) for line in str(text).replace("\r\n", "\n").split("\n")]
    return "<br>".join(line for line in lines if line).replace("|", "\\|")


def table(rows: list[list[str]]) -> str:
    """A markdown table, the first row as its header; short rows padded."""
    width = max((len(row) for row in rows), default=0)
    if width == 0:
        return ""
    lines = []
    for number, row in enumerate(rows):
        cells = [cell(value) for value in row] + [""] * (width - len(row))
        lines.append("| " + " | ".join(cells) + " |")
        if number == 0:
            lines.append("| " + " | ".join(["---"] * width) + " |")
    return "\n".join(lines)


# --- DOCX ---------------------------------------------------------------------------


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


# --- PPTX ---------------------------------------------------------------------------


def pptx_markdown(path: str) -> Office:
    """Every slide: text frames, tables, group members, chart titles, speaker notes."""
    import pptx

    deck = pptx.Presentation(path)
    parts = []
    for number, slide in enumerate(deck.slides, start=1):
        parts.append(f"## Slide {number}")
        parts.extend(_pptx_shapes(slide.shapes))
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None and notes.text.strip():
                parts.append(f"Notes: {' '.join(notes.text.split())}")
    metadata = {"slide_count": len(deck.slides), "file_type": "pptx", "extractor": "python-pptx"}
    office = Office("\n\n".join(parts), metadata, slide_count=len(deck.slides))
    pictures = sum(_pptx_pictures(slide.shapes) for slide in deck.slides)
    if pictures:
        office.warnings.append(f"pptx: {pictures} picture(s) not extracted (not OCRed)")
    return office


def _pptx_pictures(shapes: Iterable[Any]) -> int:
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    count = 0
    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            count += _pptx_pictures(shape.shapes)
        elif shape.shape_type == MSO_SHAPE_TYPE.PICTURE:
            count += 1
    return count


def _pptx_shapes(shapes: Iterable[Any]) -> Iterator[str]:
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _pptx_shapes(shape.shapes)
            continue
        if getattr(shape, "has_table", False) and shape.has_table:
            rows = [[c.text for c in row.cells] for row in shape.table.rows]
            if rows:
                yield table(rows)
            continue
        if getattr(shape, "has_chart", False) and shape.has_chart:
            chart = shape.chart
            if chart.has_title and chart.chart_title.has_text_frame:
                title = " ".join(chart.chart_title.text_frame.text.split())
                if title:
                    yield f"Chart: {title}"
            continue
        if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            lines = [" ".join(p.text.split()) for p in shape.text_frame.paragraphs]
            text = "\n".join(line for line in lines if line)
            if text:
                yield text


# --- XLSX / CSV ---------------------------------------------------------------------


def xlsx_markdown(path: str, max_cells: int = 0) -> Office:
    """Every sheet's used range, the first row as the header, values as stored; a
    workbook spanning more than ``max_cells`` cells is refused before it is read."""
    import openpyxl

    from .limits import check_xlsx_cells

    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        check_xlsx_cells(workbook, max_cells)
        names = list(workbook.sheetnames)
        parts, warnings = [], []
        metadata: dict[str, Any] = {
            "sheet_count": len(names),
            "sheet_names": names,
            "extractor": "openpyxl",
        }
        for name in names:
            sheet = workbook[name]
            values = sheet.iter_rows(values_only=True)
            rows = trimmed([[sheet_value(v) for v in row] for row in values])
            if not rows:
                warnings.append(f"sheet {name!r} is empty and was skipped")
                continue
            parts.append(f"## Sheet: {name}\n\n{table(rows)}")
            metadata[f"sheet_{name}_rows"] = len(rows) - 1
            metadata[f"sheet_{name}_columns"] = len(rows[0])
    finally:
        workbook.close()
    return Office("\n\n".join(parts), metadata, sheet_count=len(names), warnings=warnings)


def sheet_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, datetime.datetime) and value.time() == datetime.time():
        return value.date().isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)


def trimmed(rows: list[list[str]]) -> list[list[str]]:
    """Rows without the empty rows and columns around the used range."""
    rows = [row for row in rows if any(v.strip() for v in row)]
    width = max((i + 1 for row in rows for i, v in enumerate(row) if v.strip()), default=0)
    return [row[:width] for row in rows]


def csv_markdown(path: str, display_name: str) -> Office:
    """The CSV as one table, every cell exactly as written (csv module, no pandas)."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        text = handle.read()
    try:
        dialect: Any = csv.Sniffer().sniff(text[:CSV_SNIFF_BYTES], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = trimmed(list(csv.reader(io.StringIO(text), dialect)))
    columns = rows[0] if rows else []
    metadata = {
        "row_count": max(len(rows) - 1, 0),
        "column_count": len(columns),
        "columns": columns,
        "extractor": "csv",
    }
    markdown = f"# CSV Data: {display_name}\n\n{table(rows) if rows else '*No data available*'}"
    return Office(markdown, metadata, sheet_count=1)


# --- HTML tables --------------------------------------------------------------------

TABLE_TOKEN = "ZOPILOTTABLE{}X"
_HTML_LINE_ENDS = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6"})


def html_tables(path: str, out_path: str) -> list[str] | None:
    """Take the outermost ``<table>``s out of an HTML file, as markdown tables.

    docstrange's HTMLProcessor (markdownify) runs tables into each other and into the
    text before them (so its JSON misses them), gives header-less tables an empty
    header and leaves ``|`` in cells unescaped, which shifts columns. Each table is
    replaced by a paragraph holding ``TABLE_TOKEN`` and the rest written to ``out_path``
    for docstrange; extract.py puts our tables back in place of the tokens. None when
    the file has no table (docstrange then reads the file as it is).
    """
    import lxml.html

    with open(path, "rb") as handle:
        content = handle.read()
    if b"<table" not in content.lower():
        return None
    tree = lxml.html.document_fromstring(content, parser=lxml.html.HTMLParser(encoding="utf-8"))
    outermost = [
        t for t in tree.iter("table") if not any(a.tag == "table" for a in t.iterancestors())
    ]
    if not outermost:
        return None
    tables = []
    for number, element in enumerate(outermost):
        tables.append(table(_html_rows(element)))
        marker = lxml.html.Element("p")
        marker.text = TABLE_TOKEN.format(number)
        marker.tail = element.tail
        element.getparent().replace(element, marker)
    with open(out_path, "wb") as handle:
        handle.write(lxml.html.tostring(tree, encoding="utf-8"))
    return tables


def _html_rows(element: Any) -> list[list[str]]:
    rows = []
    for row in element.xpath("./tr|./thead/tr|./tbody/tr|./tfoot/tr"):
        cells = []
        for html_cell in row.xpath("./td|./th"):
            cells.append(_html_cell_text(html_cell))
            span = str(html_cell.get("colspan") or "1")
            cells.extend([""] * (min(int(span), 100) - 1 if span.isdigit() else 0))
        if cells:
            rows.append(cells)
    return rows


def _html_cell_text(html_cell: Any) -> str:
    """A cell's text; ``<br>`` and block elements end a line; nested tables flattened."""
    for node in html_cell.iter():
        if node is html_cell or not isinstance(node.tag, str):
            continue
        if node.tag in _HTML_LINE_ENDS:
            node.tail = "\n" + (node.tail or "")
        elif node.tag in {"td", "th"}:
            node.tail = " / " + (node.tail or "")
        elif node.tag in {"script", "style"}:
            node.text = ""
    return "".join(html_cell.itertext()).strip().strip("/").strip()
