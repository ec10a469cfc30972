from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OutputFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_FORMAT_UNSPECIFIED: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_MARKDOWN: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_HTML: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_TEXT: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_JSON: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_CSV: _ClassVar[OutputFormat]

class FieldExtraction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIELD_EXTRACTION_UNSPECIFIED: _ClassVar[FieldExtraction]
    FIELD_EXTRACTION_MODEL: _ClassVar[FieldExtraction]
    FIELD_EXTRACTION_LABELS: _ClassVar[FieldExtraction]
OUTPUT_FORMAT_UNSPECIFIED: OutputFormat
OUTPUT_FORMAT_MARKDOWN: OutputFormat
OUTPUT_FORMAT_HTML: OutputFormat
OUTPUT_FORMAT_TEXT: OutputFormat
OUTPUT_FORMAT_JSON: OutputFormat
OUTPUT_FORMAT_CSV: OutputFormat
FIELD_EXTRACTION_UNSPECIFIED: FieldExtraction
FIELD_EXTRACTION_MODEL: FieldExtraction
FIELD_EXTRACTION_LABELS: FieldExtraction

class DocumentParseRequest(_message.Message):
    __slots__ = ("content", "filename", "mime_type", "formats", "json_fields", "json_schema", "request_id", "field_extraction", "chunking", "parse_attachments", "csv_neutralize_formulas")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELDS_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FIELD_EXTRACTION_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    PARSE_ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    CSV_NEUTRALIZE_FORMULAS_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    filename: str
    mime_type: str
    formats: _containers.RepeatedScalarFieldContainer[OutputFormat]
    json_fields: _containers.RepeatedScalarFieldContainer[str]
    json_schema: str
    request_id: str
    field_extraction: FieldExtraction
    chunking: ChunkingOptions
    parse_attachments: bool
    csv_neutralize_formulas: bool
    def __init__(self, content: _Optional[bytes] = ..., filename: _Optional[str] = ..., mime_type: _Optional[str] = ..., formats: _Optional[_Iterable[_Union[OutputFormat, str]]] = ..., json_fields: _Optional[_Iterable[str]] = ..., json_schema: _Optional[str] = ..., request_id: _Optional[str] = ..., field_extraction: _Optional[_Union[FieldExtraction, str]] = ..., chunking: _Optional[_Union[ChunkingOptions, _Mapping]] = ..., parse_attachments: _Optional[bool] = ..., csv_neutralize_formulas: _Optional[bool] = ...) -> None: ...

class ChunkingOptions(_message.Message):
    __slots__ = ("max_tokens", "overlap_tokens", "tokenizer")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    overlap_tokens: int
    tokenizer: str
    def __init__(self, max_tokens: _Optional[int] = ..., overlap_tokens: _Optional[int] = ..., tokenizer: _Optional[str] = ...) -> None: ...

class DocumentChunk(_message.Message):
    __slots__ = ("text", "token_count", "heading_path", "page_start", "page_end", "char_start", "char_end", "prefix_chars")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    HEADING_PATH_FIELD_NUMBER: _ClassVar[int]
    PAGE_START_FIELD_NUMBER: _ClassVar[int]
    PAGE_END_FIELD_NUMBER: _ClassVar[int]
    CHAR_START_FIELD_NUMBER: _ClassVar[int]
    CHAR_END_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CHARS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_count: int
    heading_path: _containers.RepeatedScalarFieldContainer[str]
    page_start: int
    page_end: int
    char_start: int
    char_end: int
    prefix_chars: int
    def __init__(self, text: _Optional[str] = ..., token_count: _Optional[int] = ..., heading_path: _Optional[_Iterable[str]] = ..., page_start: _Optional[int] = ..., page_end: _Optional[int] = ..., char_start: _Optional[int] = ..., char_end: _Optional[int] = ..., prefix_chars: _Optional[int] = ...) -> None: ...

class DocumentMetadata(_message.Message):
    __slots__ = ("detected_type", "page_count", "sheet_count", "slide_count", "method", "size_bytes", "processing_ms", "parser_version", "field_extraction", "chunk_tokenizer")
    DETECTED_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHEET_COUNT_FIELD_NUMBER: _ClassVar[int]
    SLIDE_COUNT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_MS_FIELD_NUMBER: _ClassVar[int]
    PARSER_VERSION_FIELD_NUMBER: _ClassVar[int]
    FIELD_EXTRACTION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    detected_type: str
    page_count: int
    sheet_count: int
    slide_count: int
    method: str
    size_bytes: int
    processing_ms: float
    parser_version: str
    field_extraction: str
    chunk_tokenizer: str
    def __init__(self, detected_type: _Optional[str] = ..., page_count: _Optional[int] = ..., sheet_count: _Optional[int] = ..., slide_count: _Optional[int] = ..., method: _Optional[str] = ..., size_bytes: _Optional[int] = ..., processing_ms: _Optional[float] = ..., parser_version: _Optional[str] = ..., field_extraction: _Optional[str] = ..., chunk_tokenizer: _Optional[str] = ...) -> None: ...

class DocumentParseResponse(_message.Message):
    __slots__ = ("markdown", "html", "text", "json", "csv", "metadata", "warnings", "request_id", "chunks")
    MARKDOWN_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    CSV_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    markdown: str
    html: str
    text: str
    json: str
    csv: str
    metadata: DocumentMetadata
    warnings: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    chunks: _containers.RepeatedCompositeFieldContainer[DocumentChunk]
    def __init__(self, markdown: _Optional[str] = ..., html: _Optional[str] = ..., text: _Optional[str] = ..., json: _Optional[str] = ..., csv: _Optional[str] = ..., metadata: _Optional[_Union[DocumentMetadata, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ..., chunks: _Optional[_Iterable[_Union[DocumentChunk, _Mapping]]] = ...) -> None: ...
