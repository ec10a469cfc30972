"""Documents of the formats docstrange has no processor for (server/zopilot_server/
documents/readers/: odt, ods, odp, epub, eml, xls, rtf, xml, json), built in memory
with the libraries that write them, each holding FORMAT_WORDS or TABLE_ROWS.
"""

from __future__ import annotations

import io

from documents_builders import FORMAT_WORDS

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
