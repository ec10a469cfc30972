"""The formats read by our own readers (documents/readers/): .md, .json, .xml, .odt,
.ods, .odp, .rtf, .epub, .eml and .xls, through the real server: known words kept,
tables whole, honest warnings, and hostile files (XXE, entity bombs, repeat bombs,
deep nesting, corrupt containers) answered with INVALID_ARGUMENT or read harmlessly."""

from __future__ import annotations

import io
import itertools
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import documents_builders as build
import grpc
import pytest
import reader_builders as readers_build
from support import InProcessServer, violated_fields
from zopilot_client.pb import documents_pb2 as pb
from zopilot_client.pb import documents_pb2_grpc as pb_grpc

TABLE = "| Fruit | Tonnes |\n| --- | --- |\n| Apples | 120 |\n| Pears | 45 |"
_WORD = re.compile(r"\w+")


@pytest.fixture(scope="module")
def stub(tiny_server: InProcessServer) -> Iterator[pb_grpc.DocumentsStub]:
    with grpc.insecure_channel(tiny_server.target) as channel:
        yield pb_grpc.DocumentsStub(channel)


def _parse(stub: Any, content: bytes, filename: str, **fields: Any) -> Any:
    request = pb.DocumentParseRequest(content=content, filename=filename, **fields)
    return stub.DocumentParse(request, timeout=60)


def _refused(stub: Any, content: bytes, filename: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        _parse(stub, content, filename)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert violated_fields(caught.value) == ["content"]
    return caught.value


def _kept(expected: str, got: str) -> float:
    want = _WORD.findall(expected.lower())
    have = set(_WORD.findall(got.lower()))
    return sum(w in have for w in want) / len(want)


FORMATS = [
    # builder, filename, detected type, method, what must be in the markdown
    (readers_build.odt_document, "a.odt", "odt", "zopilot:odf",
     ["# Harvest", "- item alpha", TABLE]),
    (readers_build.ods_workbook, "a.ods", "ods", "zopilot:odf",
     ["## Sheet: Fruit", TABLE, "## Sheet: Costs", "| Rent | 500 |"]),
    (readers_build.odp_deck, "a.odp", "odp", "zopilot:odf",
     ["## Slide 1", "## Slide 2", "Closing slide"]),
    (readers_build.epub_book, "a.epub", "epub", "zopilot:epub+docstrange:HTMLProcessor",
     ["Chapter One", "Chapter Two", TABLE]),
    (readers_build.eml_message, "a.eml", "eml", "zopilot:email",
     ["# Harvest numbers", "From: Ana <ana@example.com>", "Café tables"]),
    (readers_build.xls_workbook, "a.xls", "xls", "zopilot:xlrd",
     ["## Sheet: Fruit", TABLE, "| 2024-12-02 | TRUE |"]),
    (readers_build.rtf_document, "a.rtf", "rtf", "zopilot:rtf", ["Harvest", "Café €", TABLE]),
    (readers_build.xml_document, "a.xml", "xml", "zopilot:xml",
     ["summary: Quarterly", "fruit (name=Apples, tonnes=120)", "fruit (name=Pears): 45 tonnes"]),
    (readers_build.json_records, "a.json", "json", "zopilot:json", [TABLE]),
]  # fmt: skip


@pytest.mark.parametrize(("builder", "filename", "kind", "method", "expected"), FORMATS,
                         ids=[f[2] for f in FORMATS])  # fmt: skip
def test_each_format_keeps_its_words_and_tables(stub, builder, filename, kind, method, expected):
    response = _parse(stub, builder(), filename, formats=[1, 3])
    assert response.metadata.detected_type == kind
    assert response.metadata.method == method
    for piece in expected:
        assert piece in response.markdown, (piece, response.markdown)
    tables_only = kind in ("ods", "xls", "json")
    cells = " ".join(cell for row in readers_build.TABLE_ROWS for cell in row)
    known = cells if tables_only else build.FORMAT_WORDS
    assert _kept(known, response.text) >= 0.98, response.text


def test_sheets_and_slides_are_counted(stub):
    assert _parse(stub, readers_build.ods_workbook(), "a.ods").metadata.sheet_count == 2
    assert _parse(stub, readers_build.xls_workbook(), "a.xls").metadata.sheet_count == 2
    assert _parse(stub, readers_build.odp_deck(), "a.odp").metadata.slide_count == 2


def test_ods_chunks_number_their_sheets(stub):
    response = _parse(stub, readers_build.ods_workbook(), "a.ods",
                      chunking=pb.ChunkingOptions(max_tokens=16))  # fmt: skip
    rent = [c for c in response.chunks if "Rent" in c.text]
    assert rent and rent[0].page_start == 2


def test_an_emails_attachments_are_listed_not_parsed(stub):
    response = _parse(stub, readers_build.eml_message(), "m.eml")
    listed = [w for w in response.warnings if "attachment" in w]
    assert listed == [
        "eml: attachment 'report.pdf' (application/pdf, 13 bytes) is listed, not parsed"
    ]
    assert "%PDF" not in response.markdown


def test_an_html_only_email_goes_through_the_html_reader(stub):
    response = _parse(stub, readers_build.eml_message(html=True), "m.eml", formats=[3])
    assert response.metadata.method == "zopilot:email+docstrange:HTMLProcessor"
    assert _kept(build.FORMAT_WORDS, response.text) >= 0.98
    assert "<p>" not in response.text


def test_epub_scripts_are_not_text(stub):
    response = _parse(stub, readers_build.epub_book(), "b.epub")
    assert "alert" not in response.markdown


def test_legacy_encodings_in_markdown_are_detected(stub):
    text = "# Caf\u00e9 menu\n\nCr\u00e8me br\u00fbl\u00e9e costs 5 \u20ac.\n"
    response = _parse(stub, text.encode("cp1252"), "menu.md")
    assert response.markdown == text
    assert "content is not UTF-8; decoded as cp1252" in response.warnings


# ---------------------------------------------------------------------------- hostile

XXE = (
    b'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b"<r><a>before &x; after</a></r>"
)
LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY a "hahahahahahahaha">'
    + b"".join(
        f'<!ENTITY {chr(98 + n)} "{("&" + chr(97 + n) + ";") * 10}">'.encode() for n in range(9)
    )
    + b"]><r>&j;</r>"
)


def test_xml_external_entities_are_never_read(stub):
    response = _parse(stub, XXE, "x.xml")
    assert "root:" not in response.markdown
    assert "before" in response.markdown and "after" in response.markdown


def test_an_entity_bomb_does_not_expand(stub):
    try:
        response = _parse(stub, LAUGHS, "bomb.xml")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        return
    assert len(response.markdown) < 10_000


def _zip(members: dict[str, bytes], first: tuple[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        if first:
            archive.writestr(first[0], first[1], compress_type=zipfile.ZIP_STORED)
        for name, data in members.items():
            archive.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


ODT_MIME = ("mimetype", b"application/vnd.oasis.opendocument.text")


def test_odf_with_an_external_entity_reads_no_file(stub):
    content = XXE.replace(b"<r><a>before &x; after</a></r>", b"")
    content += (
        b'<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0"'
        b' xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"><office:body>'
        b"<office:text><text:p>before &x; after</text:p></office:text></office:body>"
        b"</office:document-content>"
    )
    content = content.replace(b"<!DOCTYPE r", b"<!DOCTYPE office:document-content")
    response = _parse(stub, _zip({"content.xml": content}, ODT_MIME), "x.odt")
    assert "root:" not in response.markdown and "before" in response.markdown


def test_an_ods_repeat_bomb_is_refused_by_the_cell_budget(stub):
    cell = (
        b'<table:table-cell table:number-columns-repeated="16384">'
        b"<text:p>x</text:p></table:table-cell>"
    )
    content = (
        b'<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0"'
        b' xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"'
        b' xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"><office:body>'
        b'<office:spreadsheet><table:table table:name="S">'
        b'<table:table-row table:number-rows-repeated="1000000">' + cell + b"</table:table-row>"
        b"</table:table></office:spreadsheet></office:body></office:document-content>"
    )
    mime = ("mimetype", b"application/vnd.oasis.opendocument.spreadsheet")
    error = _refused(stub, _zip({"content.xml": content}, mime), "bomb.ods")
    assert "--doc-max-cells" in error.details()


@pytest.mark.parametrize(
    ("content", "filename", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "deep.json", "nests too deep"),
        (b'{"a": 1,', "bad.json", "is not valid JSON"),
        (b"<r><unclosed></r>", "bad.xml", "not well-formed"),
        (b"plain words, not rtf", "bad.rtf", "does not match"),
        (b"not an ole2 file at all", "bad.xls", "does not match"),
        (b"PK\x03\x04 truncated", "bad.odt", "corrupt or truncated zip"),
    ],
)
def test_malformed_files_are_invalid_argument(stub, content, filename, message):
    assert message in _refused(stub, content, filename).details()


def test_a_zip_without_its_package_is_refused(stub):
    mime = ("mimetype", b"application/epub+zip")
    error = _refused(stub, _zip({"OEBPS/x.xhtml": b"<html/>"}, mime), "e.epub")
    assert "container.xml" in error.details()


def test_deeply_nested_rtf_and_mime_do_not_crash_the_server(stub):
    rtf = b"{\\rtf1 " + b"{" * 200_000 + b"deep" + b"}" * 200_000 + b"}"
    assert "deep" in _parse(stub, rtf, "deep.rtf").markdown
    boundary = [f"b{n}" for n in range(2000)]
    parts = "".join(
        f'--{outer}\r\nContent-Type: multipart/mixed; boundary="{inner}"\r\n\r\n'
        for outer, inner in itertools.pairwise(boundary)
    )
    eml = (
        f'Subject: nested\r\nContent-Type: multipart/mixed; boundary="{boundary[0]}"\r\n\r\n'
        + parts
    ).encode()
    try:
        response = _parse(stub, eml, "nested.eml")
        assert "nested" in response.markdown
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _parse(stub, readers_build.eml_message(), "ok.eml").markdown  # still serving


def test_attachments_are_parsed_when_asked(stub):
    from email.message import EmailMessage

    message = EmailMessage()
    message["Subject"] = "With attachments"
    message.set_content("See the attached files.")
    sub = "vnd.openxmlformats-officedocument.wordprocessingml.document"
    message.add_attachment(build.docx_report(), maintype="application", subtype=sub,
                           filename="report.docx")  # fmt: skip
    message.add_attachment(b"%PDF-1.4 broken", maintype="application", subtype="pdf",
                           filename="broken.pdf")  # fmt: skip
    message.add_attachment(readers_build.eml_message(), maintype="message", subtype="rfc822")
    content = message.as_bytes()
    listed = _parse(stub, content, "m.eml")
    assert "## Attachment" not in listed.markdown
    parsed = _parse(stub, content, "m.eml", parse_attachments=True)
    assert "## Attachment: report.docx\n\n# Quarterly Report" in parsed.markdown
    assert "Invoice Number: INV-2024-007" in parsed.markdown
    broken = [w for w in parsed.warnings if "'broken.pdf' was not parsed" in w]
    assert broken and "could not parse the pdf" in broken[0]
    assert any("an attached e-mail is listed, not parsed" in w for w in parsed.warnings)
    assert "Harvest numbers" not in parsed.markdown  # the attached e-mail's subject
