"""The format registry: every document type DocumentParse accepts, in one table.

A row says how a type is recognised (extensions, MIME types, magic bytes, the member that
identifies a zip container), which limits guard it before and while it is read, and
which reader turns it into markdown inside a parser worker. Detection (server/detection.py),
the worker's dispatch (worker/dispatch.py) and the README's format list all read this table, so
a new format is one reader module and one row here.

Readers are named as ``"module:function"`` and imported in the worker only when a
document of that type arrives: the server process never imports docstrange, lxml or the
office libraries through this table. A reader takes the ``ParseJob`` and the OCR model
folder and returns an ``Extraction`` (domain.py).
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Family(enum.Enum):
    """How a type's bytes are checked before a worker sees them."""

    TEXT = "text"  # decoded (charset detection), re-encoded as UTF-8; must not be binary
    # Text that declares its own encodings (XML declaration, RTF \ansicpg, MIME
    # charsets): kept as sent, only checked not to be binary.
    RAW_TEXT = "raw text"
    PDF = "pdf"
    ZIP = "zip"  # a zip container: marker member, central directory, expansion limit
    IMAGE = "image"
    BINARY = "binary"  # any other binary format, known by its magic bytes


class Limit(enum.Enum):
    """The budgets a format is held to, besides --doc-max-bytes, the worker's time
    limit and its memory cap (which every format gets)."""

    EXPANSION = "zip expansion (100x its size, at most 256 MiB)"
    CELLS = "--doc-max-cells"
    OCR = "--doc-ocr-max-pages / --doc-ocr-max-pixels"
    XML = "XML without DTDs, entities or network (no XXE, no billion laughs)"


@dataclass(frozen=True)
class DocType:
    """A supported document type. ``name`` is what metadata.detected_type reports."""

    name: str
    family: Family
    extensions: tuple[str, ...]
    mime_types: tuple[str, ...]
    reader: str  # "module:function" in this package, run in the worker
    magic: tuple[bytes, ...] = ()
    zip_marker: str = ""  # the member that identifies a zip type (OOXML)
    zip_mimetype: str = ""  # ODF / EPUB: what the container's "mimetype" member holds
    limits: frozenset[Limit] = frozenset()

    @property
    def extension(self) -> str:
        """The extension the temp file gets (docstrange picks its processor by it)."""
        return self.extensions[0]

    def read(self) -> Callable[..., Any]:
        """The reader function (imports its module: call in the worker only)."""
        module, function = self.reader.split(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), function)  # type: ignore[no-any-return]


_OOXML = "application/vnd.openxmlformats-officedocument."
_ODF = "application/vnd.oasis.opendocument."
_ZIP = frozenset({Limit.EXPANSION, Limit.XML})
_OCR = frozenset({Limit.OCR})
TYPES: tuple[DocType, ...] = (
    DocType("pdf", Family.PDF, (".pdf",), ("application/pdf",), "readers.pdf.text:read",
            (b"%PDF-",), limits=_OCR),
    DocType("docx", Family.ZIP, (".docx",), (_OOXML + "wordprocessingml.document",),
            "readers.docx:read", zip_marker="word/document.xml", limits=_ZIP),
    DocType("xlsx", Family.ZIP, (".xlsx",), (_OOXML + "spreadsheetml.sheet",),
            "readers.xlsx:read", zip_marker="xl/workbook.xml", limits=_ZIP | {Limit.CELLS}),
    DocType("pptx", Family.ZIP, (".pptx",), (_OOXML + "presentationml.presentation",),
            "readers.pptx:read", zip_marker="ppt/presentation.xml", limits=_ZIP),
    DocType("csv", Family.TEXT, (".csv",), ("text/csv", "application/csv"),
            "readers.csv_data:read"),
    DocType("html", Family.TEXT, (".html", ".htm"), ("text/html", "application/xhtml+xml"),
            "readers.html_page:read"),
    DocType("txt", Family.TEXT, (".txt", ".text"), ("text/plain",), "readers.text:read"),
    DocType("png", Family.IMAGE, (".png",), ("image/png",), "readers.images:read",
            (b"\x89PNG\r\n\x1a\n",), limits=_OCR),
    DocType("jpg", Family.IMAGE, (".jpg", ".jpeg"), ("image/jpeg",), "readers.images:read",
            (b"\xff\xd8\xff",), limits=_OCR),
    DocType("gif", Family.IMAGE, (".gif",), ("image/gif",), "readers.images:read",
            (b"GIF87a", b"GIF89a"), limits=_OCR),
    DocType("bmp", Family.IMAGE, (".bmp",), ("image/bmp",), "readers.images:read", limits=_OCR),
    DocType("tiff", Family.IMAGE, (".tiff", ".tif"), ("image/tiff",), "readers.images:read",
            (b"II*\x00", b"MM\x00*"), limits=_OCR),
    DocType("webp", Family.IMAGE, (".webp",), ("image/webp",), "readers.images:read", limits=_OCR),
    DocType("md", Family.TEXT, (".md", ".markdown"), ("text/markdown", "text/x-markdown"),
            "readers.markdown:read"),
    DocType("json", Family.TEXT, (".json",), ("application/json",), "readers.json_data:read"),
    DocType("xml", Family.RAW_TEXT, (".xml",), ("application/xml", "text/xml"),
            "readers.xml_data:read", limits=frozenset({Limit.XML})),
    DocType("odt", Family.ZIP, (".odt",), (_ODF + "text",), "readers.odf:read_odt",
            zip_mimetype=_ODF + "text", limits=_ZIP | {Limit.CELLS}),
    DocType("ods", Family.ZIP, (".ods",), (_ODF + "spreadsheet",), "readers.odf:read_ods",
            zip_mimetype=_ODF + "spreadsheet", limits=_ZIP | {Limit.CELLS}),
    DocType("odp", Family.ZIP, (".odp",), (_ODF + "presentation",), "readers.odf:read_odp",
            zip_mimetype=_ODF + "presentation", limits=_ZIP | {Limit.CELLS}),
    DocType("rtf", Family.RAW_TEXT, (".rtf",), ("application/rtf", "text/rtf"),
            "readers.rtf:read", (b"{\\rtf",)),
    DocType("epub", Family.ZIP, (".epub",), ("application/epub+zip",), "readers.epub:read",
            zip_mimetype="application/epub+zip", limits=_ZIP),
    DocType("eml", Family.RAW_TEXT, (".eml",), ("message/rfc822",), "readers.eml:read"),
    DocType("xls", Family.BINARY, (".xls",), ("application/vnd.ms-excel",), "readers.xls:read",
            (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",), limits=frozenset({Limit.CELLS})),
)  # fmt: skip
# Refused with a hint: the formats people save these as.
LEGACY_OFFICE = {".doc": ".docx", ".ppt": ".pptx"}
BY_EXTENSION = {ext: t for t in TYPES for ext in t.extensions}
BY_MIME = {mime: t for t in TYPES for mime in t.mime_types}
BY_NAME = {t.name: t for t in TYPES}
SUPPORTED_EXTENSIONS = ", ".join(sorted(BY_EXTENSION))


def reader(doc_type: str) -> Callable[..., Any]:
    """The worker-side reader of the type named ``doc_type``."""
    return BY_NAME[doc_type].read()
