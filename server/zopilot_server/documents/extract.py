"""The docstrange 1.1.6 adapter; runs inside a parser worker, never in the server.

Only docstrange's format processors are used, called directly on a file path: never a
``DocumentExtractor`` (its default is cloud mode) and never its URL processor. Text-layer
PDFs are read with PyMuPDF (docstrange's own PDFProcessor OCRs every page and builds the
OCR models in its constructor). Images and PDFs without any text layer go to docstrange's
OCR processors when its local models are complete (ocr_models.py), and to the bundled
engine (ocr.py) when they are not; in a PDF that has a text layer on some pages, only
the other pages are OCRed, by the bundled engine.
"""

from __future__ import annotations

import functools
import importlib.metadata
import itertools
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import chunking, fields, formats, ocr, ocr_models, office, outputs, pdf_structure
from .domain import (
    LABEL_MATCH_WARNING,
    DocumentRejected,
    Extraction,
    OcrModelsMissing,
    OutputFormat,
    ParseJob,
    ParseOutcome,
)

# docstrange processor class per detected type (the OCR types are handled separately).
PROCESSORS = {
    "docx": "DOCXProcessor",
    "xlsx": "ExcelProcessor",
    "csv": "ExcelProcessor",
    "pptx": "PPTXProcessor",
    "html": "HTMLProcessor",
    "txt": "TXTProcessor",
}
# metadata["page_methods"] entries: how each page's text was obtained.
TEXT_METHOD = "pymupdf-text"
OCR_METHOD = f"{ocr.ENGINE}-ocr"
# docstrange metadata that would leak server paths or repeat what we report elsewhere.
PRIVATE_METADATA = frozenset({"file_path", "file_name", "processor"})
_DOCX_TRUNCATED = re.compile(r"\*Table truncated to first (\d+) rows out of (\d+) total\.\*")
_SPLIT_HEADING = re.compile(r"^(#+)\n## ", re.MULTILINE)
# A PDF line that starts with "#" is text, not a markdown heading: escaped as "\#".
_HASH_LINE = re.compile(r"^([ \t]*)#", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")
_DOCX_MERGED = "*Warning: Table contains merged cells which may not render correctly"


@functools.lru_cache(maxsize=1)
def parser_version() -> str:
    return importlib.metadata.version("docstrange")


def warm_up(scratch_dir: str) -> None:
    """Parse a tiny sample of every type once, so a worker's first real document is as
    fast as its hundredth (the processors import and initialise a lot lazily)."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=scratch_dir) as folder:
        for doc_type, path in _write_samples(Path(folder)).items():
            job = ParseJob(path=str(path), doc_type=doc_type, formats=(OutputFormat.MARKDOWN,))
            parse(job, model_dir=folder)


def _write_samples(folder: Path) -> dict[str, Path]:
    import docx
    import openpyxl
    import pptx
    import pymupdf

    paths = {
        t: folder / f"sample.{t}" for t in ("docx", "xlsx", "pptx", "pdf", "csv", "txt", "html")
    }
    paths["csv"].write_text("a,b\n1,2\n")
    paths["txt"].write_text("warm up\n")
    paths["html"].write_text("<h1>warm up</h1>")
    docx.Document().save(str(paths["docx"]))
    workbook = openpyxl.Workbook()
    workbook.active.append(["a", "b"])
    workbook.active.append([1, 2])
    workbook.save(str(paths["xlsx"]))
    pptx.Presentation().save(str(paths["pptx"]))
    with pymupdf.open() as pdf:
        pdf.new_page().insert_text((72, 72), "warm up")
        pdf.save(str(paths["pdf"]))
    return paths


def run_processor(doc_type: str, path: str) -> Any:
    """docstrange's processor for ``doc_type`` on ``path``: its ConversionResult."""
    import docstrange.processors as processors

    processor = getattr(processors, PROCESSORS[doc_type])()
    return processor.process(path)


def parse(job: ParseJob, model_dir: str) -> ParseOutcome:
    """Parse the file named by ``job`` into every requested output format."""
    started = time.perf_counter()
    extraction = _extract(job, Path(model_dir))
    warnings = extraction.warnings + _docstrange_notes(extraction.markdown)
    if not extraction.markdown.strip():
        warnings.append("no text found in the document")
    structured = OutputFormat.JSON in job.formats and (
        bool(job.json_fields) or job.json_schema is not None
    )
    rendered = outputs.render(
        extraction.markdown,
        tuple(f for f in job.formats if not (structured and f is OutputFormat.JSON)),
        title=job.display_name,
        metadata=extraction.metadata,
        warnings=warnings,
    )
    if structured:
        data = fields.structured(extraction.markdown, job.json_fields, job.json_schema)
        rendered[OutputFormat.JSON] = json.dumps(data, ensure_ascii=False)
        warnings.append(LABEL_MATCH_WARNING)
    return ParseOutcome(
        outputs=rendered,
        method=extraction.method,
        page_count=extraction.page_count,
        sheet_count=extraction.sheet_count,
        slide_count=extraction.slide_count,
        processing_ms=(time.perf_counter() - started) * 1000,
        parser_version=parser_version(),
        warnings=warnings,
        page_marks=chunking.page_marks(
            job.doc_type, extraction.markdown, extraction.metadata.get("sheet_names", ())
        ),
    )


def _extract(job: ParseJob, model_dir: Path) -> Extraction:
    """The registry's reader for the job's type (formats.py)."""
    return formats.reader(job.doc_type)(job, model_dir)  # type: ignore[no-any-return]


def read_image(job: ParseJob, model_dir: Path) -> Extraction:
    """An image: docstrange's OCR when its models are installed, else the bundled one."""
    if ocr_models.missing(model_dir):
        return _bundled_image(job)
    return _ocr(job, model_dir, "ImageProcessor")


# Our own walkers (office.py) for the formats whose docstrange processor loses content.
OWN_WALKERS = {"docx": "python-docx", "pptx": "python-pptx", "xlsx": "openpyxl", "csv": "csv"}


def _bundled_image(job: ParseJob) -> Extraction:
    """An image (every page of a multi-page TIFF) through the bundled engine."""
    images, warnings = ocr.image_pages(job)
    pages = [ocr.read_image(image, job.ocr_max_pixels) for image in images]
    markdown = _ocr_markdown(pages) if len(pages) > 1 else pages[0].text
    methods = [OCR_METHOD] * len(pages)
    extraction = Extraction(
        markdown, OCR_METHOD, {"pages": len(pages), "page_methods": methods}, len(pages)
    )
    extraction.warnings += warnings + [ocr.describe(n, p) for n, p in enumerate(pages, 1)]
    return extraction


def _ocr_markdown(pages: list[ocr.OcrPage]) -> str:
    return "\n\n".join(
        f"## Page {number}\n\n{page.text}" for number, page in enumerate(pages, 1) if page.text
    )


def read_office(job: ParseJob, model_dir: Path) -> Extraction:
    """docx / pptx / xlsx / csv through our walkers, html / txt through docstrange."""
    if job.doc_type in OWN_WALKERS and job.path.endswith(f".{job.doc_type}"):
        return _own_office(job)
    return _docstrange_office(job)


def _own_office(job: ParseJob) -> Extraction:
    """docx / pptx / xlsx / csv through office.py; any library failure is the file's."""
    try:
        if job.doc_type == "docx":
            result = office.docx_markdown(job.path)
        elif job.doc_type == "pptx":
            result = office.pptx_markdown(job.path)
        elif job.doc_type == "xlsx":
            result = office.xlsx_markdown(job.path, job.xlsx_max_cells)
        else:
            result = office.csv_markdown(job.path, job.display_name)
    except Exception as exc:  # zipfile, lxml, openpyxl and csv raise many types
        raise _rejected(job, exc) from exc
    return Extraction(
        result.markdown,
        f"zopilot:{OWN_WALKERS[job.doc_type]}",
        metadata=result.metadata,
        sheet_count=result.sheet_count,
        slide_count=result.slide_count,
        warnings=result.warnings,
    )


def _docstrange_office(job: ParseJob) -> Extraction:
    from docstrange.exceptions import ConversionError

    path, tables = job.path, None
    if job.doc_type == "html":
        path = job.path.removesuffix(".html") + "-untabled.html"
        try:
            tables = office.html_tables(job.path, path)
        except Exception as exc:  # lxml raises many types on hostile markup
            raise _rejected(job, exc) from exc
        if tables is None:
            path = job.path
    try:
        result = run_processor(job.doc_type, path)
    except ConversionError as exc:
        raise _rejected(job, exc) from exc
    finally:
        if path != job.path:
            os.unlink(path)
    metadata = {k: v for k, v in result.metadata.items() if k not in PRIVATE_METADATA}
    markdown = result.content
    if job.doc_type == "docx":
        markdown = repair_docx_headings(markdown)
    if tables:
        markdown = _tables_back(markdown, tables)
    extraction = Extraction(markdown, f"docstrange:{PROCESSORS[job.doc_type]}", metadata=metadata)
    if job.doc_type == "xlsx":
        extraction.sheet_count = int(metadata.get("sheet_count", 0))
        extraction.warnings += _empty_sheets(metadata)
    elif job.doc_type == "csv":
        extraction.sheet_count = 1
    elif job.doc_type == "pptx":
        extraction.slide_count = int(metadata.get("slide_count", 0))
    return extraction


def _tables_back(markdown: str, tables: list[str]) -> str:
    """Our HTML tables in place of their tokens, each a block of its own; a table whose
    token docstrange dropped (it skips some containers) is appended, not lost."""
    for number, rendered in enumerate(tables):
        token = office.TABLE_TOKEN.format(number)
        if token not in markdown:
            markdown += f"\n\n{rendered}"
            continue
        markdown = re.sub(rf"[ \t]*{token}[ \t]*", lambda _m, t=rendered: f"\n\n{t}\n\n", markdown)
    return _BLANK_LINES.sub("\n\n", markdown).strip()


def _empty_sheets(metadata: dict[str, Any]) -> list[str]:
    """docstrange silently drops empty sheets; say which."""
    return [
        f"sheet {name!r} is empty and was skipped"
        for name in metadata.get("sheet_names", [])
        if f"sheet_{name}_rows" not in metadata
    ]


def repair_docx_headings(markdown: str) -> str:
    """Undo a docstrange 1.1.6 DOCX cleaner bug: it turns "### T" into "#" + "## T"
    (it inserts a newline before every "## ", also inside "###" and "####")."""
    return _SPLIT_HEADING.sub(lambda m: m.group(1) + "## ", markdown)


def _docstrange_notes(markdown: str) -> list[str]:
    """Warnings docstrange writes into the markdown itself, surfaced for the client."""
    notes = [
        f"table truncated to {shown} rows (of {total}) by docstrange's DOCX processor"
        for shown, total in _DOCX_TRUNCATED.findall(markdown)
    ]
    if _DOCX_MERGED in markdown:
        notes.append("a table has merged cells, which markdown cannot show faithfully")
    return notes


def _rejected(job: ParseJob, exc: BaseException) -> DocumentRejected:
    """A parser failure as INVALID_ARGUMENT, without the server's temp path in it."""
    message = str(exc).replace(job.path, job.display_name)
    message = message.replace(os.path.dirname(job.path), "")
    return DocumentRejected("content", f"could not parse the {job.doc_type}: {message}")


@dataclass
class PdfText:
    """The text layer of every page (tables as markdown) and what happened reading it."""

    pages: list[str]
    repaired: bool
    table_count: int = 0
    warnings: list[str] = field(default_factory=list)
    headings: int = 0  # found from font sizes and weights (pdf_structure.py)
    column_pages: int = 0  # pages read column by column


def _page_structure(page: Any, textpage: Any) -> pdf_structure.PageStructure | None:
    """Headings and column order of a page without tables (None: plain text as is)."""
    return pdf_structure.structure(page.get_text("dict", textpage=textpage))


def _pdf_pages(job: ParseJob) -> PdfText:
    """The text of every page, its ruled tables as markdown tables, and whether MuPDF
    had to repair the file.

    Any MuPDF failure, opening the file or reading a page, is the document's fault.
    """
    import pymupdf

    try:
        with pymupdf.open(job.path, filetype="pdf") as document:
            if document.needs_pass:
                raise DocumentRejected(
                    "content", "the PDF is encrypted with a password; send an unencrypted copy"
                )
            if document.page_count == 0:
                raise DocumentRejected("content", "the PDF has no pages (corrupt?)")
            result = PdfText([], bool(getattr(document, "is_repaired", False)))
            for number, page in enumerate(document, start=1):
                # One text extraction serves the text, the tables and the structure.
                textpage = page.get_textpage(flags=pymupdf.TEXTFLAGS_TEXT)
                text, tables = pdf_page_text(page, number, result.warnings, textpage)
                found = None if tables or not text.strip() else _page_structure(page, textpage)
                if found is None:
                    text = escape_hash_lines(text)
                else:
                    text = found.markdown
                    result.headings += found.headings
                    result.column_pages += found.columns > 1
                    tables += found.tables
                result.pages.append(text)
                result.table_count += tables
            return result
    except DocumentRejected:
        raise
    except Exception as exc:  # MuPDF raises FileDataError and many FzError* types
        raise _rejected(job, exc) from exc


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
            pieces.append(f"\n{office.table(rows[inside])}\n")
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


def escape_hash_lines(text: str) -> str:
    """Plain text for markdown: a line starting with "#" gets "\\#" (not a heading)."""
    return _HASH_LINE.sub(r"\1\\#", text)


def read_pdf(job: ParseJob, model_dir: Path) -> Extraction:
    """A PDF: its text layer page by page, OCR for the pages that have none."""
    read_pdf = _pdf_pages(job)
    pages, repaired = read_pdf.pages, read_pdf.repaired
    empty = [n for n, text in enumerate(pages) if not text.strip()]
    if len(empty) == len(pages) and not ocr_models.missing(model_dir):
        extraction = _ocr(job, model_dir, "PDFProcessor")
        extraction.page_count = len(pages)
        return extraction
    ocr.check_pages(len(empty), job.ocr_max_pages)
    read = _ocr_pdf_pages(job, empty)
    texts = [
        escape_hash_lines(read[n][0].text) if n in read else text.strip()
        for n, text in enumerate(pages)
    ]
    markdown = "\n\n".join(
        f"## Page {number}\n\n{text}" for number, text in enumerate(texts, start=1) if text
    )
    methods = [OCR_METHOD if n in read else TEXT_METHOD for n in range(len(pages))]
    method = "+".join(m for m in (TEXT_METHOD, OCR_METHOD) if m in methods)
    metadata = {
        "pages": len(pages),
        "page_methods": methods,
        "table_count": read_pdf.table_count,
        "heading_count": read_pdf.headings,
        "multi_column_pages": read_pdf.column_pages,
    }
    extraction = Extraction(markdown, method, metadata, len(pages))
    extraction.warnings += read_pdf.warnings
    extraction.warnings += [ocr.describe(n + 1, page, dpi) for n, (page, dpi) in read.items()]
    if repaired:
        extraction.warnings.append("the PDF was damaged and repaired; text may be incomplete")
    return extraction


def _ocr_pdf_pages(job: ParseJob, numbers: list[int]) -> dict[int, tuple[ocr.OcrPage, int]]:
    """The bundled engine's reading (and render dpi) of the PDF pages ``numbers``."""
    if not numbers:
        return {}
    import pymupdf

    read = {}
    with pymupdf.open(job.path, filetype="pdf") as document:
        for number in numbers:
            image, dpi = ocr.render_pdf_page(document[number], job.ocr_max_pixels)
            read[number] = (ocr.read(image), dpi)
    return read


def _ocr(job: ParseJob, model_dir: Path, processor_name: str) -> Extraction:
    absent = ocr_models.missing(model_dir)
    if absent:
        raise OcrModelsMissing(ocr_models.install_hint(model_dir, absent))
    from docstrange.exceptions import ConversionError

    processor = _ocr_processor(processor_name, str(model_dir))
    try:
        result = processor.process(job.path)
    except ConversionError as exc:
        raise _rejected(job, exc) from exc
    metadata = {k: v for k, v in result.metadata.items() if k not in PRIVATE_METADATA}
    return Extraction(result.content, f"docstrange:{processor_name}(ocr)", metadata)


@functools.lru_cache(maxsize=2)
def _ocr_processor(processor_name: str, model_dir: str) -> Any:
    """Build docstrange's OCR processor once per worker (loading the models is slow)."""
    import docstrange.processors as processors
    from docstrange.pipeline import model_downloader

    _pin_model_cache(model_downloader.ModelDownloader, model_dir)
    try:
        processor = getattr(processors, processor_name)()
        # ImageProcessor loads its OCR engine on first use, inside process(), where a
        # failure would look like a bad image: load it now (PDFProcessor already has).
        getattr(processor, "_get_ocr_service", lambda: None)()
        return processor
    except Exception as exc:  # any load failure means unusable models
        raise OcrModelsMissing(
            f"the OCR models in {model_dir} could not be loaded ({type(exc).__name__}: "
            f"{exc}); re-install them with "
            f"`{ocr_models.FETCH_COMMAND.format(dir=model_dir)}`"
        ) from exc


def _pin_model_cache(downloader: type, model_dir: str) -> None:
    """docstrange ignores its cache_dir argument (ModelDownloader() with defaults, under
    HOME) and downloads what it misses: point it at our dir and forbid downloads."""
    if getattr(downloader, "_zopilot_pinned", False):
        return
    original_init = downloader.__init__

    def init(self: Any, cache_dir: Any = None) -> None:
        original_init(self, cache_dir or Path(model_dir))

    def no_download(self: Any, *args: Any, **kwargs: Any) -> None:
        raise OcrModelsMissing(ocr_models.install_hint(Path(model_dir), ["(incomplete)"]))

    downloader.__init__ = init
    downloader.download_models = no_download
    downloader._zopilot_pinned = True
