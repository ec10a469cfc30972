"""The docstrange 1.1.6 adapter: its processors, called directly on a file path.

Never a ``DocumentExtractor`` (its default is cloud mode) and never its URL processor.
The readers that use it: text.py and html_page.py for their text, images.py and
pdf/text.py for OCR when docstrange's local models are complete (ocr_models.py), and
docx / pptx / xlsx / csv_data for a file not named for its type (``walk_or_convert``).
It runs inside a parser worker, never in the server.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import ocr_models
from ..domain import DocumentRejected, Extraction, OcrModelsMissing, ParseJob
from .markdown_tables import Office

# docstrange processor class per detected type (the OCR types are handled separately).
PROCESSORS = {
    "docx": "DOCXProcessor",
    "xlsx": "ExcelProcessor",
    "csv": "ExcelProcessor",
    "pptx": "PPTXProcessor",
    "html": "HTMLProcessor",
    "txt": "TXTProcessor",
}
# docstrange metadata that would leak server paths or repeat what we report elsewhere.
PRIVATE_METADATA = frozenset({"file_path", "file_name", "processor"})
_DOCX_TRUNCATED = re.compile(r"\*Table truncated to first (\d+) rows out of (\d+) total\.\*")
_SPLIT_HEADING = re.compile(r"^(#+)\n## ", re.MULTILINE)
_DOCX_MERGED = "*Warning: Table contains merged cells which may not render correctly"


def run_processor(doc_type: str, path: str) -> Any:
    """docstrange's processor for ``doc_type`` on ``path``: its ConversionResult."""
    import docstrange.processors as processors

    processor = getattr(processors, PROCESSORS[doc_type])()
    return processor.process(path)


def walk_or_convert(job: ParseJob, library: str, walk: Callable[[ParseJob], Office]) -> Extraction:
    """Our own walker (``library`` names it in the method) for a file named for its
    type, as every registry job is; docstrange's processor otherwise. Any library
    failure in the walker is the file's."""
    if not job.path.endswith(f".{job.doc_type}"):
        return convert(job)
    try:
        result = walk(job)
    except Exception as exc:  # zipfile, lxml, openpyxl and csv raise many types
        raise rejected(job, exc) from exc
    return Extraction(
        result.markdown,
        f"zopilot:{library}",
        metadata=result.metadata,
        sheet_count=result.sheet_count,
        slide_count=result.slide_count,
        warnings=result.warnings,
    )


def convert(job: ParseJob, path: str = "") -> Extraction:
    """docstrange's processor for the job's type on ``path`` (the job's file unless
    given), its metadata cleaned and its counts and known losses reported."""
    from docstrange.exceptions import ConversionError

    try:
        result = run_processor(job.doc_type, path or job.path)
    except ConversionError as exc:
        raise rejected(job, exc) from exc
    metadata = {k: v for k, v in result.metadata.items() if k not in PRIVATE_METADATA}
    markdown = result.content
    if job.doc_type == "docx":
        markdown = repair_docx_headings(markdown)
    extraction = Extraction(markdown, f"docstrange:{PROCESSORS[job.doc_type]}", metadata=metadata)
    if job.doc_type == "xlsx":
        extraction.sheet_count = int(metadata.get("sheet_count", 0))
        extraction.warnings += _empty_sheets(metadata)
    elif job.doc_type == "csv":
        extraction.sheet_count = 1
    elif job.doc_type == "pptx":
        extraction.slide_count = int(metadata.get("slide_count", 0))
    return extraction


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


def notes(markdown: str) -> list[str]:
    """Warnings docstrange writes into the markdown itself, surfaced for the client."""
    notes = [
        f"table truncated to {shown} rows (of {total}) by docstrange's DOCX processor"
        for shown, total in _DOCX_TRUNCATED.findall(markdown)
    ]
    if _DOCX_MERGED in markdown:
        notes.append("a table has merged cells, which markdown cannot show faithfully")
    return notes


def rejected(job: ParseJob, exc: BaseException) -> DocumentRejected:
    """A parser failure as INVALID_ARGUMENT, without the server's temp path in it."""
    message = str(exc).replace(job.path, job.display_name)
    message = message.replace(os.path.dirname(job.path), "")
    return DocumentRejected("content", f"could not parse the {job.doc_type}: {message}")


def read_ocr(job: ParseJob, model_dir: Path, processor_name: str) -> Extraction:
    """docstrange's OCR processor ``processor_name`` on the job's file."""
    absent = ocr_models.missing(model_dir)
    if absent:
        raise OcrModelsMissing(ocr_models.install_hint(model_dir, absent))
    from docstrange.exceptions import ConversionError

    processor = _ocr_processor(processor_name, str(model_dir))
    try:
        result = processor.process(job.path)
    except ConversionError as exc:
        raise rejected(job, exc) from exc
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
