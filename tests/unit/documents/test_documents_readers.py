"""The readers called in process on built fixtures (documents_builders.py): DOCX merged
cells keep their columns, pictures that are not extracted are warned about, and PDF
table detection leaves frames, graph paper and table text as they must be.
"""

from __future__ import annotations

import io
from pathlib import Path

import documents_builders as build
from zopilot_server.documents.readers.docx import docx_markdown
from zopilot_server.documents.readers.pptx import pptx_markdown


def test_docx_merged_cells_keep_columns_aligned(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    table = document.add_table(rows=2, cols=3)
    for row in range(2):
        for col in range(3):
            table.cell(row, col).text = f"c{row}{col}"
    table.cell(0, 0).merge(table.cell(0, 1)).text = "merged"
    path = tmp_path / "merged.docx"
    document.save(str(path))
    lines = docx_markdown(str(path)).markdown.splitlines()
    assert lines == ["| merged |  | c02 |", "| --- | --- | --- |", "| c10 | c11 | c12 |"]


def test_images_that_are_not_extracted_are_warned_about(tmp_path: Path) -> None:
    import docx
    import pptx
    from pptx.util import Inches

    document = docx.Document()
    document.add_paragraph("caption text")
    document.add_picture(io.BytesIO(build.png_image()))
    document.save(str(tmp_path / "pic.docx"))
    result = docx_markdown(str(tmp_path / "pic.docx"))
    assert result.markdown == "caption text"
    assert result.warnings == ["docx: 1 image(s) not extracted (their text is not OCRed)"]
    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[6])
    group = slide.shapes.add_group_shape()
    group.shapes.add_picture(io.BytesIO(build.png_image()), Inches(1), Inches(1))
    slide.shapes.add_picture(io.BytesIO(build.png_image()), Inches(3), Inches(1))
    deck.save(str(tmp_path / "pic.pptx"))
    assert pptx_markdown(str(tmp_path / "pic.pptx")).warnings == [
        "pptx: 2 picture(s) not extracted (not OCRed)"
    ]


def test_pdf_frame_around_a_paragraph_is_not_a_table() -> None:
    import pymupdf
    from zopilot_server.documents.readers.pdf.tables import pdf_page_text

    with pymupdf.open() as document:
        page = document.new_page()
        page.draw_rect(pymupdf.Rect(60, 50, 400, 120), color=(0, 0, 0))
        page.insert_text((72, 72), "Framed note: read me first")
        warnings: list[str] = []
        assert pdf_page_text(page, 1, warnings) == (page.get_text(), 0)
        assert warnings == []


def test_pdf_graph_paper_is_not_searched_for_tables() -> None:
    """A page ruled like graph paper (100 x 100 rules) would cost PyMuPDF's finder
    seconds: its text is kept as lines, with a warning naming the page."""
    import pymupdf
    from zopilot_server.documents.readers.pdf.tables import pdf_page_text

    with pymupdf.open() as document:
        page = document.new_page()
        shape = page.new_shape()
        for i in range(100):
            shape.draw_line((50, 50 + i * 7), (550, 50 + i * 7))
            shape.draw_line((50 + i * 5, 50), (50 + i * 5, 750))
        shape.finish(color=(0, 0, 0))
        shape.commit()
        page.insert_text((72, 72), "Grid notes")
        warnings: list[str] = []
        assert pdf_page_text(page, 3, warnings) == (page.get_text(), 0)
        assert warnings == [
            "pdf page 3: its rules could form 10000 table cells (over 3000); tables were "
            "not looked for, their text is given as lines"
        ]


def test_pdf_table_text_is_neither_lost_nor_repeated() -> None:
    """A cell's text that runs past the table's right rule: every word of the page
    comes out exactly as often as in the text layer (the words past the rule as a line
    after the table)."""
    from collections import Counter

    import pymupdf
    from zopilot_server.documents.readers.pdf.tables import pdf_page_text

    note = "overflow note " + " ".join(f"w{n}" for n in range(22))  # ends at x=498
    with pymupdf.open(stream=build.pdf_ruled_table()) as source:
        page = source[0]
        page.insert_text((76, 100 + 2 * 24 + 10), note, fontsize=9)
        text, tables = pdf_page_text(page, 1, [])
        layer = page.get_text()
    assert tables == 1 and layer.count("w21") == 1
    assert Counter(text.replace("|", " ").replace("<br>", " ").split()) - Counter(
        {"---": 3}
    ) == Counter(layer.split())
    assert "| Item | Qty | Price |" in text.splitlines()
    assert text.splitlines()[-3].endswith("w21")  # past the rule (x=432): a line after the table
