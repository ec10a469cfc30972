"""DocumentParse as the tests call it and checks its replies: the output formats, a
``parse`` callable bound to a server, the fault server's limits, the invoice of the
model-filled fields, and checks that a server still serves, that an HTML output is safe
and what a csv output holds.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import documents_builders as build
import docx
import grpc
from grpc_health.v1 import health_pb2
from support import InProcessServer
from zopilot_client.pb import documents_pb2 as pb
from zopilot_client.pb import documents_pb2_grpc as pb_grpc

ALL_FORMATS = [
    pb.OUTPUT_FORMAT_MARKDOWN,
    pb.OUTPUT_FORMAT_HTML,
    pb.OUTPUT_FORMAT_TEXT,
    pb.OUTPUT_FORMAT_JSON,
    pb.OUTPUT_FORMAT_CSV,
]


Parse = Callable[..., pb.DocumentParseResponse]


def make_parse(server: InProcessServer) -> Iterator[Parse]:
    # Parsed spreadsheets can exceed gRPC's default 4 MiB receive limit on the client.
    options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    with grpc.insecure_channel(server.target, options=options) as channel:
        stub = pb_grpc.DocumentsStub(channel)

        def parse(content: bytes, filename: str, timeout: float = 60, **fields: Any) -> Any:
            request = pb.DocumentParseRequest(content=content, filename=filename, **fields)
            return stub.DocumentParse(request, timeout=timeout)

        yield parse


INVOICE_SCHEMA = {
    "type": "object",
    "properties": {
        "invoice_number": {"type": "string"},
        "customer": {"type": "string"},
        "date": {"type": "string"},
        "total": {"type": "number"},
    },
    "required": ["invoice_number", "customer", "date", "total"],
}


def invoice_docx() -> bytes:
    """An invoice as a user would write it: labels, a bill-to line, an item table."""
    document = docx.Document()
    document.add_heading("Invoice", 1)
    for line in ("Invoice number: INV-2024-017", "Date: 2024-03-05"):
        document.add_paragraph(line)
    document.add_paragraph("Bill to: Acme GmbH, Hauptstrasse 5, Berlin")
    rows = [["Item", "Quantity", "Price"], ["Chairs", "12", "600.00"], ["Desks", "3", "650.00"]]
    table = document.add_table(rows=len(rows), cols=3)
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.add_paragraph("Total: 1250.00 EUR")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def parse(server: Any, content: bytes, filename: str, **fields: Any) -> pb.DocumentParseResponse:
    with grpc.insecure_channel(server.target) as channel:
        request = pb.DocumentParseRequest(
            content=content, filename=filename, formats=[pb.OUTPUT_FORMAT_JSON], **fields
        )
        return pb_grpc.DocumentsStub(channel).DocumentParse(request, timeout=300)


class _Tags(HTMLParser):
    """Every start tag and its attributes, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def assert_safe_html(page: str) -> list[tuple[str, dict[str, str]]]:
    """No script / img / iframe / style tags, no on* handler, no javascript: URL."""
    reader = _Tags()
    reader.feed(page)
    for tag, attrs in reader.tags:
        assert tag not in {"script", "img", "iframe", "object", "embed", "style", "link"}, tag
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert not value.strip().lower().startswith("javascript:"), (tag, value)
            if name in {"src", "srcset", "background"}:
                raise AssertionError(f"remote source in <{tag} {name}={value!r}>")
    return reader.tags


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


FAULT_TIMEOUT_S = 3.0


FAULT_MAX_BYTES = 64 * 1024


def requests_dir(server: InProcessServer) -> Path:
    return server.running.documents.parser.requests_dir


def assert_serves(parse: Parse, server: InProcessServer) -> None:
    """The server still parses documents and reports SERVING."""
    reply = parse(build.TEXT_NOTE, "after.txt")
    assert "Meeting notes" in reply.markdown
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
