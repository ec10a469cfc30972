"""The zopilot.v1.Documents servicer: protobuf in, DocumentParser, protobuf out.

All logic lives below (validation, detection, parser and pool beside it; worker/ and
readers/ in the parser workers); this module only translates and logs one line per
request; error_table.STATUS_TABLE says what our domain errors mean as gRPC statuses
(the RPC chain's ErrorMapping link applies it).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import grpc
from zopilot_client.pb import documents_pb2 as pb
from zopilot_client.pb import documents_pb2_grpc as pb_grpc

from ...config import ServerConfig
from ...errors import loggable
from ..domain import OutputFormat, ParseOutcome
from .chunk_tokenizers import ChunkTokenizers, chunk_outcome
from .csv_safety import neutralize_formulas
from .model_fields import EngineSource, ModelFieldFiller
from .parser import DocumentParser
from .validation import DocumentRequest, to_document_request

log = logging.getLogger(__name__)


class DocumentsServicer(pb_grpc.DocumentsServicer):
    """Parses documents; ``start`` / ``close`` manage the parser's worker processes."""

    def __init__(self, config: ServerConfig, engine: EngineSource | None = None) -> None:
        self._config = config
        self.parser = DocumentParser(config)
        self.fields = ModelFieldFiller(config, engine)
        self.tokenizers = ChunkTokenizers(engine or (lambda: None))

    async def start(self) -> None:
        await self.parser.start()

    async def close(self) -> None:
        await self.parser.close()

    async def DocumentParse(
        self, request: pb.DocumentParseRequest, context: grpc.aio.ServicerContext
    ) -> pb.DocumentParseResponse:
        started = time.perf_counter()
        document = to_document_request(request, self._config)
        try:
            chunking = document.chunking
            wanted = document
            if chunking is not None:
                tokenizer, tokenizer_name = await self.tokenizers.resolve(chunking)
                document = _with_markdown(document)
            plan = self.fields.plan(document)
            outcome = await self.parser.parse(plan.parse_request, context.time_remaining())
            outcome = await self.fields.fill(plan, outcome, context.time_remaining())
            if chunking is not None:
                keep = OutputFormat.MARKDOWN in wanted.formats
                outcome = await chunk_outcome(outcome, chunking, tokenizer, tokenizer_name, keep)
        except Exception as exc:
            log.info(
                "document %s (%s, %d bytes): %s",
                document.request_id,
                loggable(document.filename or document.mime_type or "?"),
                len(document.content),
                type(exc).__name__,
            )
            raise
        log.info(
            "document %s (%s, %d bytes) parsed in %.0f ms by %s",
            document.request_id,
            loggable(document.filename or document.mime_type or "?"),
            len(document.content),
            (time.perf_counter() - started) * 1000,
            outcome.method,
        )
        response = to_pb(outcome, document)
        if request.csv_neutralize_formulas and response.HasField("csv"):
            response.csv = neutralize_formulas(response.csv)
        return response


def _with_markdown(document: DocumentRequest) -> DocumentRequest:
    """The request with markdown among its formats: chunks are cut from it."""
    if OutputFormat.MARKDOWN in document.formats:
        return document
    return dataclasses.replace(document, formats=(*document.formats, OutputFormat.MARKDOWN))


def to_pb(outcome: ParseOutcome, document: DocumentRequest) -> pb.DocumentParseResponse:
    response = pb.DocumentParseResponse(
        metadata=pb.DocumentMetadata(
            detected_type=outcome.doc_type,
            page_count=outcome.page_count,
            sheet_count=outcome.sheet_count,
            slide_count=outcome.slide_count,
            method=outcome.method,
            size_bytes=len(document.content),
            processing_ms=outcome.processing_ms,
            parser_version=outcome.parser_version,
            field_extraction=outcome.field_extraction,
            chunk_tokenizer=outcome.chunk_tokenizer,
        ),
        warnings=outcome.warnings,
        request_id=document.request_id,
        chunks=[
            pb.DocumentChunk(
                text=chunk.text,
                token_count=chunk.token_count,
                heading_path=chunk.heading_path,
                page_start=chunk.page_start,
                page_end=chunk.page_end,
                char_start=chunk.char_start,
                char_end=chunk.char_end,
                prefix_chars=chunk.prefix_chars,
            )
            for chunk in outcome.chunks
        ],
    )
    for fmt, text in outcome.outputs.items():
        setattr(response, fmt.value, text)
    return response
