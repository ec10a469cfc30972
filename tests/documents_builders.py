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


# --- the formats without a docstrange processor (readers/) ----------------------------
# Each holds FORMAT_WORDS, so a test can measure the words kept; tables hold TABLE_ROWS.

FORMAT_WORDS = "Quarterly harvest report: orchards yielded apples, pears and quinces."
TABLE_ROWS = [["Fruit", "Tonnes"], ["Apples", "120"], ["Pears", "45"]]


def odt_document() -> bytes:
    """An ODF text: a heading, a paragraph, a nested list and a table (odfpy)."""
    from odf import opendocument, table, text

    document = opendocument.OpenDocumentText()
    document.text.addElement(text.H(outlinelevel=1, text="Harvest"))
    document.text.addElement(text.P(text=FORMAT_WORDS))
    items = text.List()
    for word in ("alpha", "beta"):
        item = text.ListItem()
        item.addElement(text.P(text=f"item {word}"))
        items.addElement(item)
    document.text.addElement(items)
    document.text.addElement(_odf_table(table, text, "Yield"))
    return _odf_saved(document)


def ods_workbook() -> bytes:
    """An ODF spreadsheet: two sheets with data (odfpy); LibreOffice-style trailing
    repeats of empty rows and cells."""
    from odf import opendocument, table, text

    document = opendocument.OpenDocumentSpreadsheet()
    document.spreadsheet.addElement(_odf_table(table, text, "Fruit"))
    costs = table.Table(name="Costs")
    for values in (["Category", "Cost"], ["Rent", "500"]):
        row = table.TableRow()
        for value in values:
            cell = table.TableCell()
            cell.addElement(text.P(text=value))
            row.addElement(cell)
        row.addElement(table.TableCell(numbercolumnsrepeated=16000))
        costs.addElement(row)
    costs.addElement(table.TableRow(numberrowsrepeated=1048000))
    document.spreadsheet.addElement(costs)
    return _odf_saved(document)


def odp_deck() -> bytes:
    """An ODF presentation: two slides with text frames (odfpy)."""
    from odf import draw, opendocument, style, text

    document = opendocument.OpenDocumentPresentation()
    layout = style.PageLayout(name="layout")
    document.automaticstyles.addElement(layout)
    master = style.MasterPage(name="master", pagelayoutname=layout)
    document.masterstyles.addElement(master)
    for number, words in enumerate((FORMAT_WORDS, "Closing slide words"), start=1):
        page = draw.Page(masterpagename=master, name=f"page{number}")
        frame = draw.Frame(width="20cm", height="5cm", x="1cm", y="1cm")
        box = draw.TextBox()
        box.addElement(text.P(text=words))
        frame.addElement(box)
        page.addElement(frame)
        document.presentation.addElement(page)
    return _odf_saved(document)


def _odf_table(table: object, text: object, name: str) -> object:
    grid = table.Table(name=name)  # type: ignore[attr-defined]
    for values in TABLE_ROWS:
        row = table.TableRow()  # type: ignore[attr-defined]
        for value in values:
            cell = table.TableCell()  # type: ignore[attr-defined]
            cell.addElement(text.P(text=value))  # type: ignore[attr-defined]
            row.addElement(cell)
        grid.addElement(row)
    return grid


def _odf_saved(document: object) -> bytes:
    buffer = io.BytesIO()
    document.write(buffer)  # type: ignore[attr-defined]
    return buffer.getvalue()


def epub_book() -> bytes:
    """A two-chapter EPUB 3 (ebooklib); chapter 2 holds a table."""
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("zopilot-test")
    book.set_title("Orchard Book")
    book.set_language("en")
    first = epub.EpubHtml(title="One", file_name="one.xhtml", lang="en")
    first.content = f"<h1>Chapter One</h1><p>{FORMAT_WORDS}</p><script>alert(1)</script>"
    second = epub.EpubHtml(title="Two", file_name="two.xhtml", lang="en")
    rows = "".join(
        "<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in TABLE_ROWS
    )
    second.content = f"<h1>Chapter Two</h1><table>{rows}</table><p>The end.</p>"
    book.add_item(first)
    book.add_item(second)
    book.toc = [first, second]
    book.spine = [first, second]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    buffer = io.BytesIO()
    epub.write_epub(buffer, book)
    return buffer.getvalue()


def eml_message(*, html: bool = False, attachment: bytes = b"%PDF-1.4 fake") -> bytes:
    """A MIME e-mail with a text (or only an HTML) body and a PDF attachment."""
    from email.message import EmailMessage

    message = EmailMessage()
    message["Subject"] = "Harvest numbers"
    message["From"] = "Ana <ana@example.com>"
    message["To"] = "Bo <bo@example.com>"
    message["Date"] = "Mon, 02 Dec 2024 10:00:00 +0000"
    if html:
        message.set_content(f"<html><body><p>{FORMAT_WORDS}</p></body></html>", subtype="html")
    else:
        message.set_content(f"{FORMAT_WORDS}\n\nCaf\u00e9 tables follow.\n", charset="utf-8")
    message.add_attachment(attachment, maintype="application", subtype="pdf", filename="report.pdf")
    return message.as_bytes()


def xls_workbook() -> bytes:
    """A legacy BIFF8 workbook (xlwt): two sheets, numbers, a date and a boolean."""
    import datetime

    import xlwt

    book = xlwt.Workbook()
    fruit = book.add_sheet("Fruit")
    for r, row in enumerate(TABLE_ROWS):
        for c, value in enumerate(row):
            fruit.write(r, c, int(value) if value.isdigit() else value)
    notes = book.add_sheet("Notes")
    notes.write(0, 0, "When")
    notes.write(0, 1, "Ok")
    notes.write(1, 0, datetime.date(2024, 12, 2), xlwt.easyxf(num_format_str="YYYY-MM-DD"))
    notes.write(1, 1, True)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def rtf_document() -> bytes:
    """An RTF file as WordPad writes one: tables of fonts and colours, cp1252 escapes, a
    Unicode character and a two-row table (no RTF writer library exists on PyPI)."""
    rows = "".join(
        r"\trowd\cellx2000\cellx4000\pard\intbl " + r"\cell ".join(row) + r"\cell\row" + "\n"
        for row in TABLE_ROWS
    )
    return (
        r"{\rtf1\ansi\ansicpg1252\deff0{\fonttbl{\f0\fswiss Arial;}}"
        r"{\colortbl ;\red255\green0\blue0;}{\*\generator Riched20;}"
        r"{\info{\author Hidden Author}}" + "\n"
        r"\pard\b Harvest\b0\par" + "\n"
        r"\pard "
        + FORMAT_WORDS
        + r" Caf\'e9 \u8364? costs.\par"
        + "\n"
        + rows
        + r"\pard The end.\par}"
    ).encode("ascii")


def xml_document() -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<report year="2024">'
        f"<summary>{FORMAT_WORDS}</summary>"
        '<fruit name="Apples" tonnes="120"/><fruit name="Pears">45 tonnes</fruit></report>'
    ).encode()


def json_records() -> bytes:
    import json

    header, *rows = TABLE_ROWS
    return json.dumps([dict(zip(header, row, strict=True)) for row in rows]).encode()


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
