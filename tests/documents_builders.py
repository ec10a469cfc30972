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


# --- fidelity fixtures: content docstrange 1.1.6 loses, which we must keep ------------

SCRIPT_TEXT = (
    "Hello <script>alert(1)</script> and <img src=x onerror=alert(2)> and "
    '<a href="javascript:alert(3)">link</a> <img src="https://evil.example/t.png">'
)


def docx_fidelity() -> bytes:
    """Paragraphs before a 30-row table, text after it, a nested table, a hyperlink,
    a header and footer, a list item and a cell with first_name / 2*3*4."""
    from docx.opc.constants import RELATIONSHIP_TYPE
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    document = docx.Document()
    document.sections[0].header.paragraphs[0].text = "Confidential header alpha"
    document.sections[0].footer.paragraphs[0].text = "Footer page omega"
    document.add_paragraph("Intro paragraph one before the table.")
    document.add_paragraph("Second intro paragraph with first_name and 2*3*4 inside.")
    document.add_paragraph("A bullet item kept", style="List Bullet")
    table = document.add_table(rows=30, cols=2)
    table.cell(0, 0).text = "first_name"
    table.cell(0, 1).text = "score"
    for row in range(1, 30):
        table.cell(row, 0).text = f"person_{row}"
        table.cell(row, 1).text = str(100 + row)
    nested = table.cell(1, 1).add_table(rows=1, cols=2)
    nested.cell(0, 0).text = "nestedleft"
    nested.cell(0, 1).text = "nestedright"
    paragraph = document.add_paragraph("After the table: see ")
    rel = paragraph.part.relate_to(
        "https://example.com/docs", RELATIONSHIP_TYPE.HYPERLINK, is_external=True
    )
    link = OxmlElement("w:hyperlink")
    link.set(qn("r:id"), rel)
    run = OxmlElement("w:r")
    text = OxmlElement("w:t")
    text.text = "hyperlinkword"
    run.append(text)
    link.append(run)
    paragraph._p.append(link)
    document.add_paragraph(SCRIPT_TEXT)
    return _saved(document)


def pptx_fidelity() -> bytes:
    """A slide with a title, a table, a group of text boxes and a titled chart."""
    from pptx.chart.data import CategoryChartData
    from pptx.enum.chart import XL_CHART_TYPE
    from pptx.util import Inches

    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[5])
    slide.shapes.title.text = "Quarterly tables"
    shape = slide.shapes.add_table(3, 2, Inches(0.5), Inches(1.5), Inches(4), Inches(1.5))
    for r, row in enumerate([["Region", "Units"], ["Tablenorth", "17"], ["Tablesouth", "23"]]):
        for c, value in enumerate(row):
            shape.table.cell(r, c).text = value
    group = slide.shapes.add_group_shape()
    for number, word in enumerate(["groupedalpha", "groupedbeta"]):
        box = group.shapes.add_textbox(Inches(5), Inches(1 + number), Inches(2), Inches(0.5))
        box.text_frame.text = word
    data = CategoryChartData()
    data.categories = ["a", "b"]
    data.add_series("s", (1, 2))
    chart = slide.shapes.add_chart(
        XL_CHART_TYPE.COLUMN_CLUSTERED, Inches(5), Inches(3), Inches(3), Inches(2), data
    ).chart
    chart.has_title = True
    chart.chart_title.text_frame.text = "Chartheading revenue"
    return _saved(deck)


def xlsx_fidelity() -> bytes:
    """A one-row sheet, a header-less numeric sheet and a sheet with NA-like text."""
    workbook = openpyxl.Workbook()
    single = workbook.active
    single.title = "OneRow"
    single.append(["lonelyvalue", 42, "first_name"])
    bare = workbook.create_sheet("Bare")
    bare.append([1, 2, 3])
    bare.append([4, 5, 6])
    nulls = workbook.create_sheet("Nulls")
    nulls.append(["key", "value"])
    nulls.append(["a", "NA"])
    nulls.append(["b", "NULL"])
    return _saved(workbook)


CSV_FIDELITY = b'id,note,count\n1,"two\nlines",17\n2,NA,\n3,N/A,19\n4,NULL,20\n5,x_y*z*w,21\n'


def pdf_fidelity() -> bytes:
    """A text-layer PDF with identifiers and a script-looking line."""
    document = pymupdf.open()
    page = document.new_page()
    page.insert_text((72, 72), "user_id and 2*3*4 stay")
    page.insert_text((72, 100), "<script>alert(1)</script> javascript:alert(2)")
    data = document.tobytes()
    document.close()
    return data


def pdf_hash_lines() -> bytes:
    """A text-layer PDF whose lines start with "#" (issue numbers, not headings)."""
    document = pymupdf.open()
    page = document.new_page()
    page.insert_text((72, 72), "#42 fixed the parser")
    page.insert_text((72, 100), "# not a heading either")
    data = document.tobytes()
    document.close()
    return data


HTML_TABLES = (
    b"<html><body><h1>Stock</h1><p>Intro text</p>"
    b"<table><tr><td>Name</td><td>Qty</td></tr><tr><td>apple</td><td>3</td></tr></table>"
    b"<table><thead><tr><th>Code</th><th>Note</th></tr></thead>"
    b"<tbody><tr><td>x|y</td><td>line<br>two</td></tr></tbody></table>"
    b"<p>Between</p><table><tr><th colspan=2>Wide</th></tr>"
    b"<tr><td>cellword</td><td><table><tr><td>n1</td><td>n2</td></tr></table></td></tr>"
    b"</table><p>End</p></body></html>"
)
