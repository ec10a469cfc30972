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


def _one_page_pdf(*lines: str) -> bytes:
    """A text-layer PDF page with ``lines``, 28 points apart."""
    document = pymupdf.open()
    page = document.new_page()
    for index, line in enumerate(lines):
        page.insert_text((72, 72 + 28 * index), line)
    data = document.tobytes()
    document.close()
    return data


def pdf_fidelity() -> bytes:
    """A text-layer PDF with identifiers and a script-looking line."""
    return _one_page_pdf("user_id and 2*3*4 stay", "<script>alert(1)</script> javascript:alert(2)")


def pdf_hash_lines() -> bytes:
    """A text-layer PDF whose lines start with "#" (issue numbers, not headings)."""
    return _one_page_pdf("#42 fixed the parser", "# not a heading either")


HTML_TABLES = (
    b"<html><body><h1>Stock</h1><p>Intro text</p>"
    b"<table><tr><td>Name</td><td>Qty</td></tr><tr><td>apple</td><td>3</td></tr></table>"
    b"<table><thead><tr><th>Code</th><th>Note</th></tr></thead>"
    b"<tbody><tr><td>x|y</td><td>line<br>two</td></tr></tbody></table>"
    b"<p>Between</p><table><tr><th colspan=2>Wide</th></tr>"
    b"<tr><td>cellword</td><td><table><tr><td>n1</td><td>n2</td></tr></table></td></tr>"
    b"</table><p>End</p></body></html>"
)


def _numbered(paragraph: object, num_id: int, level: int) -> None:
    """Give a python-docx paragraph a ``numPr`` (list ``num_id``, level ``level``)."""
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    properties = paragraph._p.get_or_add_pPr()  # type: ignore[attr-defined]
    num_pr = OxmlElement("w:numPr")
    for tag, value in (("w:ilvl", level), ("w:numId", num_id)):
        element = OxmlElement(tag)
        element.set(qn("w:val"), str(value))
        num_pr.append(element)
    properties.append(num_pr)


def _add_multilevel_lists(document: object) -> None:
    """numbering.xml gains abstractNum 90 (decimal / bullet / lowerLetter levels) and
    lists 91, 92 (both on it: a second list restarts at 1) and 93 (starts at 5)."""
    from docx.oxml import parse_xml

    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    levels = "".join(
        f'<w:lvl w:ilvl="{n}"><w:start w:val="1"/><w:numFmt w:val="{fmt}"/>'
        f'<w:lvlText w:val="%{n + 1}."/></w:lvl>'
        for n, fmt in enumerate(("decimal", "bullet", "lowerLetter"))
    )
    root = document.part.numbering_part.element  # type: ignore[attr-defined]
    first_num = root.find(parse_xml(f"<w:num {w}/>").tag)
    definition = f'<w:abstractNum {w} w:abstractNumId="90">{levels}</w:abstractNum>'
    first_num.addprevious(parse_xml(definition))  # abstractNums come before nums
    for num_id in (91, 92):
        num = f'<w:num {w} w:numId="{num_id}"><w:abstractNumId w:val="90"/></w:num>'
        root.append(parse_xml(num))
    root.append(
        parse_xml(
            f'<w:num {w} w:numId="93"><w:abstractNumId w:val="90"/>'
            '<w:lvlOverride w:ilvl="0"><w:startOverride w:val="5"/></w:lvlOverride></w:num>'
        )
    )


def docx_lists() -> bytes:
    """Numbered and bulleted lists: a "List Number" style list, a nested list, a second
    list on the same definition (restarts), one starting at 5, and bullets."""
    document = docx.Document()
    _add_multilevel_lists(document)
    document.add_paragraph("Steps follow.")
    for word in ("Preheat", "Mix", "Bake"):
        document.add_paragraph(f"{word} step", style="List Number")
    document.add_paragraph("Nested list follows.")
    for text, level in (
        ("Fruit", 0),
        ("apple", 1),
        ("pear", 1),
        ("Vegetables", 0),
        ("leek", 1),
        ("baby leek", 2),
        ("giant leek", 2),
        ("Grains", 0),
    ):
        _numbered(document.add_paragraph(text), 91, level)
    document.add_paragraph("Second list follows.")
    for text in ("again one", "again two"):
        _numbered(document.add_paragraph(text), 92, 0)
    for text in ("fifth item", "sixth item"):
        _numbered(document.add_paragraph(text), 93, 0)
    document.add_paragraph("Bullets follow.")
    for text in ("red", "green"):
        document.add_paragraph(text, style="List Bullet")
    return _saved(document)


def docx_merged_table() -> bytes:
    """A 5x3 table: "Region" merged down rows 1-2 of column 0 (vMerge), "Wide" merged
    across columns 1-2 of row 3 (gridSpan), and rows 3-4 of column 0 merged (both
    cells' text kept in the merged cell, as Word does)."""
    document = docx.Document()
    grid = document.add_table(rows=5, cols=3)
    for row in range(5):
        for col in range(3):
            grid.cell(row, col).text = f"r{row}c{col}"
    grid.cell(1, 0).merge(grid.cell(2, 0)).text = "Region"
    grid.cell(3, 1).merge(grid.cell(3, 2)).text = "Wide"
    grid.cell(3, 0).merge(grid.cell(4, 0))  # keeps "r3c0" and "r4c0" as two paragraphs
    document.add_paragraph("After the table.")
    return _saved(document)


PDF_TABLE_ROWS = [["Item", "Qty", "Price"], ["apple", "3", "1.50"], ["pear", "10", "0.75"]]


def pdf_ruled_table(
    rows: list[list[str]] | None = None, *, header_above: list[str] | None = None,
    caption: str = "",
) -> bytes:  # fmt: skip
    """A text-layer page: a line of text, a table drawn as ruled lines with a word per
    cell (the default: ``PDF_TABLE_ROWS``), then a closing line and "2 of 3" prose.
    ``header_above``: a header row drawn above the top rule, each over its column;
    ``caption``: a sentence just above the top rule."""
    rows = rows or PDF_TABLE_ROWS
    document = pymupdf.open()
    page = document.new_page()
    page.insert_text((72, 72), "Intro line before the table")
    columns = len(rows[0])
    left, top, width, height = 72, 100, min(120, 450 // columns), 24
    for c, value in enumerate(header_above or ()):
        page.insert_text((left + c * width + 4, top - 6), value)
    if caption:
        page.insert_text((left + 4, top - 6), caption)
    for r in range(len(rows) + 1):
        page.draw_line((left, top + r * height), (left + columns * width, top + r * height))
    for c in range(columns + 1):
        page.draw_line((left + c * width, top), (left + c * width, top + len(rows) * height))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            page.insert_text((left + c * width + 4, top + r * height + 16), value)
    bottom = top + len(rows) * height
    page.insert_text((72, bottom + 30), "Closing line after the table")
    page.insert_text((72, bottom + 50), "Item 2 of 3 is pear")
    data = document.tobytes()
    document.close()
    return data


PLAIN_INTRO = "The prices below were agreed for the spring market in the town square."
PLAIN_OUTRO = "Prices include the market fee and are valid until the end of May."


def pdf_plain_columns(*, prose: bool = False, aligned: bool = True) -> bytes:
    """Text laid out in columns, like a table, but with no ruled lines (no drawings);
    with ``prose``, a paragraph above and below it; not ``aligned``: every value at its
    own height (no rows)."""
    document = pymupdf.open()
    page = document.new_page()
    if prose:
        page.insert_text((72, 70), PLAIN_INTRO, fontsize=10)
    for r, row in enumerate(PDF_TABLE_ROWS):
        for c, value in enumerate(row):
            y = 100 + r * 24 + (0 if aligned else c * 8)
            page.insert_text((72 + c * 120, y), value)
    if prose:
        page.insert_text((72, 200), PLAIN_OUTRO, fontsize=10)
    data = document.tobytes()
    document.close()
    return data


# Words the readers' formats (reader_builders.py) and the structured PDF hold, so a test
# can measure the words kept.
FORMAT_WORDS = "Quarterly harvest report: orchards yielded apples, pears and quinces."


# --- PDF structure: headings drawn by font size and weight, two columns --------------

PDF_HEADINGS = [("Annual Orchard Review", 22, 3), ("Growing Season", 15, 4),
                ("Key findings", 10, 5), ("Two Column Notes", 15, 4)]  # fmt: skip
LEFT_COLUMN = " ".join(f"left{n} column words flow down first." for n in range(12))
RIGHT_COLUMN = " ".join(f"right{n} column words come after." for n in range(12))


def pdf_structured() -> bytes:
    """Page 1: a title, a section heading and a bold run-in heading over body text.
    Page 2: a heading, then two columns written line by line across the page (the
    content stream interleaves them), then a full-width closing line."""
    import textwrap

    document = pymupdf.open()
    page = document.new_page()
    (title, title_size, _), (section, section_size, _), (bold, _, _), _ = PDF_HEADINGS
    page.insert_text((72, 72), title, fontsize=title_size, fontname="hebo")
    page.insert_text((72, 110), section, fontsize=section_size, fontname="hebo")
    page.insert_textbox(pymupdf.Rect(72, 125, 520, 200), FORMAT_WORDS * 3, fontsize=10)
    page.insert_text((72, 220), bold, fontsize=10, fontname="hebo")
    page.insert_textbox(pymupdf.Rect(72, 232, 520, 300), FORMAT_WORDS * 2, fontsize=10)
    page = document.new_page()
    page.insert_text((72, 72), PDF_HEADINGS[3][0], fontsize=PDF_HEADINGS[3][1], fontname="hebo")
    left, right = textwrap.wrap(LEFT_COLUMN, 38), textwrap.wrap(RIGHT_COLUMN, 38)
    for n in range(max(len(left), len(right))):
        if n < len(left):
            page.insert_text((72, 110 + n * 13), left[n], fontsize=10)
        if n < len(right):
            page.insert_text((320, 110 + n * 13), right[n], fontsize=10)
    page.insert_text((72, 700), "The closing line runs across the whole width of the page.",
                     fontsize=10)  # fmt: skip
    data = document.tobytes()
    document.close()
    return data
