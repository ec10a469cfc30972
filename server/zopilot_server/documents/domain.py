"""DocumentParse domain objects and errors, shared by the server and its worker processes.

Nothing here imports gRPC or docstrange: the worker processes unpickle these types, and
they must stay cheap to import there. errors.STATUS_TABLE maps the errors to statuses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class OutputFormat(str, enum.Enum):
    """An output DocumentParse can return; the value is the response field's name."""

    MARKDOWN = "markdown"
    HTML = "html"
    TEXT = "text"
    JSON = "json"
    CSV = "csv"


# What the JSON output's warnings say when fields were matched by label (fields.py);
# here, because the server process (model_fields.py) must not import docstrange.
LABEL_MATCH_WARNING = (
    "json: fields were matched by their labels in the document; docstrange's LLM field "
    "extraction needs an Ollama server and is disabled in this offline parser"
)


class FieldExtraction(enum.Enum):
    """How json_fields / json_schema are filled (zopilot.v1.FieldExtraction)."""

    AUTO = 0  # the model when it can, else labels
    MODEL = 1
    LABELS = 2


@dataclass(frozen=True)
class ParseJob:
    """What a worker needs to parse one document that already lies on disk."""

    path: str
    doc_type: str
    formats: tuple[OutputFormat, ...]
    json_fields: tuple[str, ...] = ()
    json_schema: dict[str, object] | None = None
    display_name: str = "document"
    request_id: str = ""
    # Bundled OCR limits (readers/ocr.py): pages read per document, pixels per image.
    ocr_max_pages: int = 50
    ocr_max_pixels: int = 40_000_000
    xlsx_max_cells: int = 2_000_000  # --doc-max-cells (worker/limits.py); 0 = no limit
    parse_attachments: bool = False  # e-mail: parse attachments too (readers/eml.py)
    # Test-only fault to act out (see worker/faults.py); empty unless --doc-fault-injection.
    fault: str = ""


@dataclass
class ParseOutcome:
    """A parsed document: the requested outputs plus what the client should know."""

    outputs: dict[OutputFormat, str]
    method: str
    doc_type: str = ""
    page_count: int = 0
    sheet_count: int = 0
    slide_count: int = 0
    processing_ms: float = 0.0
    parser_version: str = ""
    warnings: list[str] = field(default_factory=list)
    field_extraction: str = ""  # "model", "labels", or "" when no fields were asked for
    # (offset, number) where each page, slide or sheet starts in the markdown (chunking.py).
    page_marks: list[tuple[int, int]] = field(default_factory=list)
    chunks: list[Any] = field(default_factory=list)  # chunking.Chunk, set in the server
    chunk_tokenizer: str = ""


@dataclass
class Extraction:
    """A reader's markdown for one document, and what it learnt on the way (formats.py:
    every reader returns one; worker/dispatch.py renders the outputs from it)."""

    markdown: str
    method: str
    metadata: dict[str, Any] = field(default_factory=dict)
    page_count: int = 0
    sheet_count: int = 0
    slide_count: int = 0
    warnings: list[str] = field(default_factory=list)


class DocumentError(Exception):
    """Base of the errors DocumentParse reports to clients (never INTERNAL)."""


class DocumentRejected(DocumentError):
    """The request or the document is unusable as sent: INVALID_ARGUMENT on ``field``."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class OcrModelsMissing(DocumentError):
    """OCR is needed but its local models are not installed: FAILED_PRECONDITION."""


class ParseTimeout(DocumentError):
    """The parser ran past its time limit or the call's deadline: DEADLINE_EXCEEDED."""


class ParserBusy(DocumentError):
    """Every worker is busy and the wait queue is full: RESOURCE_EXHAUSTED."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ParserClosed(DocumentError):
    """The parser pool is shutting down: UNAVAILABLE."""


class ParserOutOfMemory(Exception):
    """Parsing needed more memory than a worker may have: RESOURCE_EXHAUSTED."""


class WorkersCannotStart(Exception):
    """No parser worker is alive and the last one failed to start (docstrange missing, a
    broken install): requests fail at once instead of waiting for a worker that never
    comes, and health reports the Documents service NOT_SERVING."""
