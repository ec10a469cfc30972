"""A PDF's text: the text layer read with PyMuPDF page by page (docstrange's own
PDFProcessor OCRs every page and builds the OCR models in its constructor), the bundled
OCR engine for pages without a text layer, docstrange's OCR for a PDF with none at all
when its local models are complete."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import ocr_models
from ...domain import DocumentRejected, Extraction, ParseJob
from .. import docstrange, ocr
from . import structure
from .tables import pdf_page_text

# metadata["page_methods"] entries: how each page's text was obtained.
TEXT_METHOD = "pymupdf-text"
# A PDF line that starts with "#" is text, not a markdown heading: escaped as "\#".
_HASH_LINE = re.compile(r"^([ \t]*)#", re.MULTILINE)


@dataclass
class PdfText:
    """The text layer of every page (tables as markdown) and what happened reading it."""

    pages: list[str]
    repaired: bool
    table_count: int = 0
    warnings: list[str] = field(default_factory=list)
    headings: int = 0  # found from font sizes and weights (structure.py)
    column_pages: int = 0  # pages read column by column


def _page_structure(page: Any, textpage: Any) -> structure.PageStructure | None:
    """Headings and column order of a page without tables (None: plain text as is)."""
    return structure.structure(page.get_text("dict", textpage=textpage))


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
        raise docstrange.rejected(job, exc) from exc


def escape_hash_lines(text: str) -> str:
    """Plain text for markdown: a line starting with "#" gets "\\#" (not a heading)."""
    return _HASH_LINE.sub(r"\1\\#", text)


def read(job: ParseJob, model_dir: Path) -> Extraction:
    """A PDF: its text layer page by page, OCR for the pages that have none."""
    read_pdf = _pdf_pages(job)
    pages, repaired = read_pdf.pages, read_pdf.repaired
    empty = [n for n, text in enumerate(pages) if not text.strip()]
    if len(empty) == len(pages) and not ocr_models.missing(model_dir):
        extraction = docstrange.read_ocr(job, model_dir, "PDFProcessor")
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
    methods = [ocr.METHOD if n in read else TEXT_METHOD for n in range(len(pages))]
    method = "+".join(m for m in (TEXT_METHOD, ocr.METHOD) if m in methods)
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
