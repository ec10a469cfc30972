"""DocumentParseRequest (protobuf) to a DocumentRequest, or INVALID_ARGUMENT.

Every field rule lives here and every violation is reported at once, as BadRequest field
violations. The document type and the bytes themselves are judged later (detection.py)
and only if the fields are sound.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from zopilot_client.pb import documents_pb2 as pb

from ...config import ServerConfig
from ...errors import MAX_ID_CHARS, FieldViolation, InvalidArgument, Message, request_id_problem
from ...json_schema_text import MAX_SCHEMA_DEPTH, SchemaTextProblem, parse_schema
from ..chunking import MAX_CHUNK_TOKENS, ChunkingRequest
from ..domain import FieldExtraction, OutputFormat

MAX_FILENAME_CHARS = 1024
MAX_REQUEST_ID_CHARS = MAX_ID_CHARS
MAX_FORMATS = 16  # five formats exist; a few repeats are harmless, a million are not
MAX_JSON_FIELDS = 64
MAX_JSON_FIELD_CHARS = 256
MAX_JSON_SCHEMA_BYTES = 64 * 1024
MAX_JSON_SCHEMA_DEPTH = MAX_SCHEMA_DEPTH
MAX_TOKENIZER_CHARS = 256

FORMATS = {
    pb.OUTPUT_FORMAT_MARKDOWN: OutputFormat.MARKDOWN,
    pb.OUTPUT_FORMAT_HTML: OutputFormat.HTML,
    pb.OUTPUT_FORMAT_TEXT: OutputFormat.TEXT,
    pb.OUTPUT_FORMAT_JSON: OutputFormat.JSON,
    pb.OUTPUT_FORMAT_CSV: OutputFormat.CSV,
}


@dataclass(frozen=True)
class DocumentRequest:
    """A DocumentParse request whose fields are valid (the bytes are not judged yet)."""

    content: bytes
    filename: str
    mime_type: str
    formats: tuple[OutputFormat, ...]
    json_fields: tuple[str, ...]
    json_schema: dict[str, Any] | None
    request_id: str
    field_extraction: FieldExtraction = FieldExtraction.AUTO
    chunking: ChunkingRequest | None = None
    parse_attachments: bool = False

    @property
    def wants_fields(self) -> bool:
        return bool(self.json_fields) or self.json_schema is not None


def to_document_request(message: pb.DocumentParseRequest, config: ServerConfig) -> DocumentRequest:
    violations: list[FieldViolation] = []
    _check_content(message.content, config.doc_max_bytes, violations)
    _check_length("filename", message.filename, MAX_FILENAME_CHARS, violations)
    problem = request_id_problem(message.request_id)
    if problem:
        violations.append(FieldViolation("request_id", problem))
    formats = _formats(message.formats, violations)
    json_fields = _json_fields(message.json_fields, violations)
    json_schema = _json_schema(message.json_schema, violations)
    structured = bool(json_fields) or json_schema is not None
    if structured and OutputFormat.JSON not in formats:
        field = "json_schema" if json_schema is not None else "json_fields"
        violations.append(FieldViolation(field, "needs OUTPUT_FORMAT_JSON in formats"))
    extraction = FieldExtraction.AUTO
    try:
        extraction = FieldExtraction(message.field_extraction)
    except ValueError:
        violations.append(
            FieldViolation("field_extraction", f"unknown value {message.field_extraction}")
        )
    chunking = _chunking(message, violations)
    if violations:
        raise InvalidArgument(violations)
    return DocumentRequest(
        content=message.content,
        filename=message.filename,
        mime_type=message.mime_type,
        formats=formats,
        json_fields=json_fields,
        json_schema=json_schema,
        request_id=message.request_id or uuid.uuid4().hex,
        field_extraction=extraction,
        chunking=chunking,
        parse_attachments=message.parse_attachments,
    )


def _chunking(
    message: pb.DocumentParseRequest, violations: list[FieldViolation]
) -> ChunkingRequest | None:
    if not message.HasField("chunking"):
        return None
    options = message.chunking
    before = len(violations)
    if not 1 <= options.max_tokens <= MAX_CHUNK_TOKENS:
        violations.append(
            FieldViolation(
                "chunking.max_tokens",
                f"is {options.max_tokens}; it must be 1..{MAX_CHUNK_TOKENS}",
            )
        )
    elif not 0 <= options.overlap_tokens < options.max_tokens:
        violations.append(
            FieldViolation(
                "chunking.overlap_tokens",
                f"is {options.overlap_tokens}; it must be at least 0 and less than "
                f"max_tokens ({options.max_tokens})",
            )
        )
    if len(options.tokenizer) > MAX_TOKENIZER_CHARS:
        violations.append(
            FieldViolation("chunking.tokenizer", f"is longer than {MAX_TOKENIZER_CHARS} characters")
        )
    if len(violations) > before:
        return None
    return ChunkingRequest(options.max_tokens, options.overlap_tokens, options.tokenizer)


def _check_content(content: bytes, limit: int, violations: list[FieldViolation]) -> None:
    if not content:
        violations.append(FieldViolation("content", "is empty"))
    elif len(content) > limit:
        violations.append(
            FieldViolation(
                "content",
                f"is {len(content)} bytes; the limit is {limit} bytes (--doc-max-bytes)",
            )
        )


def _check_length(field: str, value: str, limit: int, violations: list[FieldViolation]) -> None:
    if len(value) > limit:
        violations.append(FieldViolation(field, f"is longer than {limit} characters"))


def _formats(values: Sequence[int], violations: list[FieldViolation]) -> tuple[OutputFormat, ...]:
    if len(values) > MAX_FORMATS:
        # Judged by the count alone: a million bad values say nothing more than one.
        violations.append(
            FieldViolation("formats", Message.TOO_MANY.format(limit=MAX_FORMATS, value=len(values)))
        )
        return (OutputFormat.MARKDOWN,)
    chosen: list[OutputFormat] = []
    for index, value in enumerate(values):
        if value not in FORMATS:
            violations.append(
                FieldViolation(f"formats[{index}]", f"unknown or unspecified format {value}")
            )
        elif FORMATS[value] not in chosen:
            chosen.append(FORMATS[value])
    return tuple(chosen) or (OutputFormat.MARKDOWN,)


def _json_fields(values: Sequence[str], violations: list[FieldViolation]) -> tuple[str, ...]:
    if len(values) > MAX_JSON_FIELDS:
        violations.append(
            FieldViolation(
                "json_fields", Message.TOO_MANY.format(limit=MAX_JSON_FIELDS, value=len(values))
            )
        )
        return ()
    for index, value in enumerate(values):
        if not value.strip():
            violations.append(FieldViolation("json_fields", Message.EMPTY_ITEM.format(index=index)))
        elif len(value) > MAX_JSON_FIELD_CHARS:
            violations.append(
                FieldViolation(
                    "json_fields",
                    Message.TOO_LONG_ITEM.format(index=index, limit=MAX_JSON_FIELD_CHARS),
                )
            )
    return tuple(values)


def _json_schema(text: str, violations: list[FieldViolation]) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        return parse_schema(text, max_bytes=MAX_JSON_SCHEMA_BYTES, max_depth=MAX_JSON_SCHEMA_DEPTH)
    except SchemaTextProblem as problem:
        violations.append(FieldViolation("json_schema", str(problem)))
        return None
