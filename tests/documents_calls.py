"""DocumentParse as the tests call it: one fixture of every format, and a ``parse``
callable bound to a server.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import docx
import grpc
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
