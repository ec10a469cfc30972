"""Real test documents with known content, built in memory (python-docx, openpyxl,
python-pptx, PyMuPDF). Shared by the DocumentParse tests and bench/documents.py."""

from __future__ import annotations

import io

import docx
import openpyxl
import pptx
import pymupdf


def docx_report(table_rows: int = 3) -> bytes:
    """Headings at three levels, a paragraph and an Item/Total table."""
    document = docx.Document()
    document.add_heading("Quarterly Report", level=1)
    document.add_paragraph("Revenue grew in every region.")
    document.add_heading("Regional Results", level=2)
    document.add_heading("North", level=3)
    document.add_paragraph("Invoice Number: INV-2024-007")
    table = document.add_table(rows=table_rows, cols=2)
    table.cell(0, 0).text = "Item"
    table.cell(0, 1).text = "Total"
    for row in range(1, table_rows):
        table.cell(row, 0).text = f"Widget {row}"
        table.cell(row, 1).text = str(40 + row)
    return _saved(document)


def xlsx_workbook() -> bytes:
    """Two sheets with data and one empty sheet."""
    workbook = openpyxl.Workbook()
    sales = workbook.active
    sales.title = "Sales"
    sales.append(["Region", "Amount"])
    sales.append(["North", 1200])
    sales.append(["South", 800])
    costs = workbook.create_sheet("Costs")
    costs.append(["Category", "Cost"])
    costs.append(["Rent", 500])
    workbook.create_sheet("Empty")
    return _saved(workbook)


def pptx_deck(slides: int = 3) -> bytes:
    deck = pptx.Presentation()
    for number in range(1, slides + 1):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = f"Slide title {number}"
        slide.placeholders[1].text = f"Bullet point {number}"
    return _saved(deck)


def pdf_pages(pages: int = 3, *, password: str = "", text: bool = True) -> bytes:
    """A PDF whose page N says "Page N marker" (or has no text layer at all)."""
    document = pymupdf.open()
    for number in range(1, pages + 1):
        page = document.new_page()
        if text:
            page.insert_text((72, 72), f"Page {number} marker: the quick brown fox")
        else:
            page.draw_rect(pymupdf.Rect(72, 72, 200, 200), color=(0, 0, 0), fill=(0.5, 0.5, 0.5))
    options = {}
    if password:
        options = {
            "encryption": pymupdf.PDF_ENCRYPT_AES_256,
            "user_pw": password,
            "owner_pw": password + "-owner",
        }
    data = document.tobytes(**options)
    document.close()
    return data


def png_image() -> bytes:
    pixmap = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 40, 20), 0)
    pixmap.clear_with(255)
    return pixmap.tobytes("png")


def csv_rows(rows: int) -> bytes:
    lines = ["id,name,amount"] + [f"{i},name {i},{i * 1.5}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


HTML_PAGE = (
    b"<html><head><title>T</title></head><body><h1>Release Notes</h1>"
    b"<p>Fixed the <b>parser</b>.</p><table><tr><th>Version</th><th>Date</th></tr>"
    b"<tr><td>1.2</td><td>2024-05-01</td></tr></table></body></html>"
)
TEXT_NOTE = b"Meeting notes\n\nAction: ship the release\nOwner: Dana\n"


def _saved(document: object) -> bytes:
    buffer = io.BytesIO()
    document.save(buffer)  # type: ignore[attr-defined]
    return buffer.getvalue()
