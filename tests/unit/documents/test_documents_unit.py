"""DocumentParse building blocks without a server: detection, outputs, fields, models."""

from __future__ import annotations

import json
from pathlib import Path

import documents_builders as build
import pytest
from docstrange.result import MarkdownToJSONParser
from zopilot_server.documents import fields, ocr_models, outputs
from zopilot_server.documents.domain import DocumentRejected, OutputFormat
from zopilot_server.documents.readers.docstrange import repair_docx_headings
from zopilot_server.documents.server import detection
from zopilot_server.documents.worker import faults


@pytest.mark.parametrize(
    ("filename", "mime_type", "content", "expected"),
    [
        ("a.PDF", "", build.pdf_pages(1), "pdf"),
        ("dir/sub/a.docx", "", build.docx_report(), "docx"),
        ("a.xlsx", "application/pdf", build.xlsx_workbook(), "xlsx"),  # extension wins
        ("", "image/png", build.png_image(), "png"),
        ("", "application/octet-stream", build.pptx_deck(1), "pptx"),  # magic bytes
        ("notes.htm", "", b"<p>hi</p>", "html"),
        ("BMW.txt", "", b"BMW service report 2024", "txt"),  # "BM" is no bitmap
    ],
)
def test_detect_accepts(filename: str, mime_type: str, content: bytes, expected: str) -> None:
    assert detection.detect(filename, mime_type, content).doc_type.name == expected


@pytest.mark.parametrize(
    ("filename", "mime_type", "content", "field"),
    [
        ("a.txt", "", b"", "content"),
        ("a", "application/x-unknown", b"x", "mime_type"),
        ("a.ppt", "", b"x", "filename"),
        ("a.txt", "", b"abc\x00def", "content"),
        ("a.png", "", b"\xff\xd8\xff\xe0jpeg", "content"),
    ],
)
def test_detect_rejects(filename: str, mime_type: str, content: bytes, field: str) -> None:
    with pytest.raises(DocumentRejected) as info:
        detection.detect(filename, mime_type, content)
    assert info.value.field == field


def test_detect_refuses_zip_bombs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detection, "MAX_EXPANDED_BYTES", 1000)
    with pytest.raises(DocumentRejected, match="expands to"):
        detection.detect("a.docx", "", build.docx_report())


def test_utf16_text_is_reencoded() -> None:
    detected = detection.detect("a.txt", "", "Grüße".encode("utf-16"))
    assert detected.content == "Grüße".encode() and detected.warnings


MARKDOWN_SAMPLES = [
    "# T\n\nintro\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n| 3 | 4 |\n\nafter\n",
    "plain\ntext\n\n\n\nmore\n- item\n- item 2\n\n1. one\n2. two\n",
    "## H\n> quote\n```py\ncode | x |\n```\n| h |\n| - |\n| v |\ntext **bold** [l](u)\n",
    "# A\n\n" + "\n".join(f"| {i} | x |" for i in range(50)) + "\n\n\n\n\ntail\n\n- l\n",
]


@pytest.mark.parametrize("markdown", MARKDOWN_SAMPLES)
def test_linear_json_parser_matches_docstrange(markdown: str) -> None:
    """The linear variant changes only speed: same result as the parser it replaces
    (docstrange's, with our table reader), and docstrange's paragraphs and lists."""
    expected = outputs.TableMarkdownToJSONParser().parse(markdown)
    assert outputs.LinearMarkdownToJSONParser().parse(markdown) == expected
    ours = expected["document"]["sections"]
    theirs = MarkdownToJSONParser().parse(markdown)["document"]["sections"]
    strip = [{k: v for k, v in s["content"].items() if k != "tables"} for s in ours]
    assert strip == [{k: v for k, v in s["content"].items() if k != "tables"} for s in theirs]


def test_json_small_uses_docstrange_parser_without_warning() -> None:
    warnings: list[str] = []
    data = json.loads(outputs.to_json("# T\n\nbody", {"pages": 1}, warnings))
    assert data["document"]["sections"][0]["title"] == "T" and data["pages"] == 1
    assert warnings == []


def test_csv_keeps_empty_cells_and_separates_tables() -> None:
    markdown = "| a | b | c |\n| --- | --- | --- |\n| 1 |  | 3 |\n\ntext\n\n| x |\n| --- |\n| y |\n"
    warnings: list[str] = []
    assert outputs.to_csv(markdown, warnings).splitlines() == [
        "a,b,c", "1,,3", "", "=== Table 2 ===", "", "x", "y",
    ]  # fmt: skip
    assert warnings == []
    outputs.to_csv("no tables", warnings)
    assert warnings == ["csv: the document has no tables; csv is empty"]


def test_text_and_html_renderings() -> None:
    markdown = "# Title\n\nSome **bold** text.\n\n| a | b |\n| --- | --- |\n| 1 | 2 |"
    assert outputs.to_text(markdown) == "Title\n\nSome bold text.\n\na\tb\n1\t2"
    page = outputs.to_html(markdown, "<doc>")
    assert "<title>&lt;doc&gt;</title>" in page and "<h1>Title</h1>" in page
    assert "http" not in page
    rendered = outputs.render(
        "x", (OutputFormat.MARKDOWN, OutputFormat.CSV), title="t", metadata={}, warnings=[]
    )
    assert set(rendered) == {OutputFormat.MARKDOWN, OutputFormat.CSV}


def test_fields_match_labels_lines_and_tables() -> None:
    markdown = (
        "**Invoice No:** A-1\nDue date: 2024-06-01\n\n| Item | Amount |\n| --- | --- |\n"
        "| Total | 1,200.50 |\n"
    )
    found = fields.extract_fields(markdown, ["invoice_no", "Due Date", "total", "item", "vat"])
    assert found == {
        "invoice_no": "A-1",
        "Due Date": "2024-06-01",
        "total": "1,200.50",
        "item": "Total",
        "vat": None,
    }
    schema = {"properties": {"total": {"type": "number"}, "paid": {"type": "boolean"}}}
    data = fields.structured(markdown + "Paid: yes\n", (), schema)["extracted_data"]
    assert data == {"total": 1200.5, "paid": True}


def test_docx_heading_repair() -> None:
    assert repair_docx_headings("# A\n#\n## Table 1\n##\n## D") == "# A\n### Table 1\n#### D"


def test_fault_names_need_the_flag() -> None:
    assert faults.requested("zopilot-fault-hang.txt", enabled=True) == "hang"
    assert faults.requested("zopilot-fault-hang.txt", enabled=False) == ""
    assert faults.requested("zopilot-fault-nope.txt", enabled=True) == ""


def test_ocr_model_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ocr_models.main(["check", "--dir", str(tmp_path)]) == 1
    assert "ocr_models fetch --dir" in capsys.readouterr().err
    for relative in (
        "layout/model.safetensors",
        "tableformer/model_artifacts/tableformer/accurate/tm_config.json",
        "easyocr/model/craft_mlt_25k.pth",
        "easyocr/model/english_g2.pth",
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    assert ocr_models.missing(tmp_path) == []
    assert ocr_models.main(["check", "--dir", str(tmp_path)]) == 0


def test_workers_drop_credentials() -> None:
    from zopilot_server.documents.worker.sandbox import drop_secrets

    environ = {
        "PATH": "/bin",
        "ZOPILOT_API_KEY": "k",
        "HF_TOKEN": "t",
        "NANONETS_API_KEY": "n",
        "AWS_SECRET_ACCESS_KEY": "s",
        "LANG": "C.UTF-8",
    }
    drop_secrets(environ)
    assert environ == {"PATH": "/bin", "LANG": "C.UTF-8"}
