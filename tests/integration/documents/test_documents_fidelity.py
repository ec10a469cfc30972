"""DocumentParse keeps what is in the document and renders it safely.

Each fixture (tests/documents_builders.py) holds content docstrange 1.1.6's processors
lose: DOCX tables past row 20, text around tables, nested tables, headers, footers and
hyperlinks; PPTX tables, group shapes and chart titles; one-row and header-less sheets;
CSV cells that hold a newline, NA / N/A / NULL and integers in a column with blanks.
They go through the real server; the renderers' and readers' edge cases in process are
in unit/documents/ (test_documents_outputs.py, test_documents_readers.py).
"""

from __future__ import annotations

import csv
import io
import json

import documents_builders as build
import pytest
from documents_calls import ALL_FORMATS, Parse, assert_safe_html, csv_rows
from zopilot_client.pb import documents_pb2 as pb
from zopilot_server.documents import outputs
from zopilot_server.documents.readers.markdown_tables import table

# --- through the RPC ---------------------------------------------------------------


def test_docx_keeps_order_whole_tables_margins_links_and_nested_tables(parse: Parse) -> None:
    reply = parse(build.docx_fidelity(), "fidelity.docx", formats=ALL_FORMATS)
    markdown = reply.markdown
    order = [
        "Confidential header alpha",
        "Intro paragraph one before the table.",
        "| first_name | score |",
        "| person_29 | 129 |",
        "After the table: see hyperlinkword",
        "Footer page omega",
    ]
    positions = [markdown.index(text) for text in order]
    assert positions == sorted(positions)
    assert "- A bullet item kept" in markdown.splitlines()
    assert "nestedleft / nestedright" in markdown
    assert not any("truncated" in w for w in reply.warnings)
    # text keeps identifiers and arithmetic as written, in prose and in cells
    assert "with first_name and 2*3*4 inside." in reply.text
    assert "first_name\tscore" in reply.text.splitlines()
    assert "person_7\t107" in reply.text.splitlines()
    # csv: the nested table's line break stays inside its (quoted) cell
    rows = csv_rows(reply.csv)
    assert len(rows) == 30 and all(len(row) == 2 for row in rows)
    assert rows[1] == ["person_1", "101\nnestedleft / nestedright"]
    assert rows[29] == ["person_29", "129"]
    # json keeps the paragraphs that come before the table
    paragraphs = json.loads(reply.json)["document"]["sections"][0]["content"]["paragraphs"]
    assert "Intro paragraph one before the table." in paragraphs
    tags = assert_safe_html(reply.html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in reply.html
    assert [t for t, _ in tags].count("table") == 1
    assert "<table><thead><tr><th>first_name</th>" in reply.html


def test_pptx_keeps_tables_groups_and_chart_titles(parse: Parse) -> None:
    reply = parse(build.pptx_fidelity(), "deck.pptx", formats=ALL_FORMATS)
    lines = reply.markdown.splitlines()
    for line in ("## Slide 1", "Quarterly tables", "| Region | Units |", "| Tablenorth | 17 |"):
        assert line in lines
    for word in ("Tablesouth", "groupedalpha", "groupedbeta", "Chartheading revenue"):
        assert word in reply.text
    assert csv_rows(reply.csv) == [["Region", "Units"], ["Tablenorth", "17"], ["Tablesouth", "23"]]
    assert reply.metadata.slide_count == 1


def test_xlsx_one_row_and_header_less_sheets_keep_their_data(parse: Parse) -> None:
    reply = parse(build.xlsx_fidelity(), "book.xlsx", formats=ALL_FORMATS)
    markdown = reply.markdown
    assert "| lonelyvalue | 42 | first_name |" in markdown.splitlines()
    assert "| 1 | 2 | 3 |" in markdown and "| 4 | 5 | 6 |" in markdown
    assert "Unnamed" not in markdown
    assert "| a | NA |" in markdown and "| b | NULL |" in markdown
    assert not any("empty" in w for w in reply.warnings), reply.warnings
    assert reply.metadata.sheet_count == 3
    assert ["lonelyvalue", "42", "first_name"] in csv_rows(reply.csv)
    assert "lonelyvalue\t42\tfirst_name" in reply.text.splitlines()


def test_csv_keeps_cells_as_written_and_the_clients_name(parse: Parse) -> None:
    reply = parse(build.CSV_FIDELITY, "client-data.csv", formats=ALL_FORMATS)
    assert reply.markdown.startswith("# CSV Data: client-data.csv")
    assert "document.csv" not in reply.markdown
    assert csv_rows(reply.csv) == csv_rows(build.CSV_FIDELITY.decode())
    assert "5\tx_y*z*w\t21" in reply.text.splitlines()
    assert "17.0" not in reply.markdown and "| 3 | N/A | 19 |" in reply.markdown
    assert_safe_html(reply.html)


@pytest.mark.parametrize(
    ("content", "filename"),
    [
        (build.SCRIPT_TEXT.encode(), "evil.txt"),
        (build.pdf_fidelity(), "evil.pdf"),
        (
            b"<html><body><h1>T</h1><p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"
            b'<script>alert(2)</script><img src="https://evil.example/x.png" onerror="x()">'
            b'<a href="javascript:alert(3)">click</a><p onclick="y()">para</p></body></html>',
            "evil.html",
        ),
    ],
    ids=["txt", "pdf", "html"],
)
def test_html_output_has_no_active_or_remote_content(
    parse: Parse, content: bytes, filename: str
) -> None:
    reply = parse(content, filename, formats=[pb.OUTPUT_FORMAT_HTML, pb.OUTPUT_FORMAT_TEXT])
    assert_safe_html(reply.html)
    assert "<script" not in reply.html.lower()
    if filename == "evil.pdf":
        assert "user_id and 2*3*4 stay" in reply.text


def test_shift_jis_text_is_detected(parse: Parse) -> None:
    text = "日本語のテキストです。東京都の会議メモ。"
    reply = parse(text.encode("shift_jis"), "memo.txt")
    assert text in reply.markdown
    assert any("decoded as cp932" in w or "shift_jis" in w for w in reply.warnings)


def test_pdf_lines_starting_with_hash_are_not_headings(parse: Parse) -> None:
    formats = [pb.OUTPUT_FORMAT_MARKDOWN, pb.OUTPUT_FORMAT_TEXT, pb.OUTPUT_FORMAT_HTML]
    reply = parse(build.pdf_hash_lines(), "issues.pdf", formats=formats)
    assert "\\#42 fixed the parser" in reply.markdown.splitlines()
    assert "#42 fixed the parser" in reply.text.splitlines()
    assert "# not a heading either" in reply.text.splitlines()
    assert "<h1>" not in reply.html and "<p>#42 fixed the parser" in reply.html


def test_html_tables_are_separate_whole_and_in_json(parse: Parse) -> None:
    reply = parse(build.HTML_TABLES, "stock.html", formats=ALL_FORMATS)
    lines = reply.markdown.splitlines()
    for line in ("| Name | Qty |", "| apple | 3 |", "| x\\|y | line<br>two |", "| Wide |  |"):
        assert line in lines
    assert "| cellword | n1 / n2 |" in lines
    assert reply.markdown.index("Intro text") < reply.markdown.index("| Name | Qty |")
    assert reply.markdown.index("Between") < reply.markdown.index("| Wide |  |")
    tables = outputs.to_csv(reply.markdown, []).split("=== Table")
    assert len(tables) == 3
    assert csv_rows(tables[1].split("\n", 2)[2].strip()) == [["Code", "Note"], ["x|y", "line\ntwo"]]
    sections = json.loads(reply.json)["document"]["sections"]
    found = [t for s in sections for t in s["content"].get("tables", [])]
    assert len(found) == 3, sections
    assert_safe_html(reply.html)
    assert reply.metadata.method == "docstrange:HTMLProcessor"


# --- docx list numbering, vertical merges, pdf tables ----------------------------------


def test_docx_numbered_lists_are_ordered_nested_and_restart(parse: Parse) -> None:
    formats = [pb.OUTPUT_FORMAT_MARKDOWN, pb.OUTPUT_FORMAT_HTML, pb.OUTPUT_FORMAT_TEXT]
    reply = parse(build.docx_lists(), "lists.docx", formats=formats)
    assert reply.markdown == (
        "Steps follow.\n\n"
        "1. Preheat step\n2. Mix step\n3. Bake step\n\n"
        "Nested list follows.\n\n"
        "1. Fruit\n    - apple\n    - pear\n2. Vegetables\n    - leek\n"
        "        1. baby leek\n        2. giant leek\n3. Grains\n\n"
        "Second list follows.\n\n"
        "1. again one\n2. again two\n\n5. fifth item\n6. sixth item\n\n"
        "Bullets follow.\n\n- red\n- green"
    )
    assert "<ol><li>Preheat step</li><li>Mix step</li><li>Bake step</li></ol>" in reply.html
    assert (
        "<ol><li>Fruit<ul><li>apple</li><li>pear</li></ul></li><li>Vegetables<ul><li>leek"
        "<ol><li>baby leek</li><li>giant leek</li></ol></li></ul></li><li>Grains</li></ol>"
    ) in reply.html
    assert '<ol start="5"><li>fifth item</li><li>sixth item</li></ol>' in reply.html
    assert "<ul><li>red</li><li>green</li></ul>" in reply.html
    assert_safe_html(reply.html)
    assert "2. Mix step" in reply.text.splitlines()


def test_docx_vertical_and_horizontal_merges_keep_columns(parse: Parse) -> None:
    formats = [pb.OUTPUT_FORMAT_MARKDOWN, pb.OUTPUT_FORMAT_CSV]
    reply = parse(build.docx_merged_table(), "merged.docx", formats=formats)
    assert reply.markdown.splitlines() == [
        "| r0c0 | r0c1 | r0c2 |",
        "| --- | --- | --- |",
        "| Region | r1c1 | r1c2 |",
        "|  | r2c1 | r2c2 |",
        "| r3c0<br>r4c0 | Wide |  |",
        "|  | r4c1 | r4c2 |",
        "",
        "After the table.",
    ]
    assert csv_rows(reply.csv) == [
        ["r0c0", "r0c1", "r0c2"],
        ["Region", "r1c1", "r1c2"],
        ["", "r2c1", "r2c2"],
        ["r3c0\nr4c0", "Wide", ""],
        ["", "r4c1", "r4c2"],
    ]


def test_pdf_ruled_table_becomes_a_markdown_table_in_place(parse: Parse) -> None:
    reply = parse(build.pdf_ruled_table(), "table.pdf", formats=ALL_FORMATS)
    assert reply.markdown.splitlines() == [
        "## Page 1",
        "",
        "Intro line before the table",
        "",
        "| Item | Qty | Price |",
        "| --- | --- | --- |",
        "| apple | 3 | 1.50 |",
        "| pear | 10 | 0.75 |",
        "",
        "Closing line after the table",
        "Item 2 of 3 is pear",
    ]
    assert csv_rows(reply.csv) == build.PDF_TABLE_ROWS
    assert "apple\t3\t1.50" in reply.text.splitlines()
    assert reply.text.count("apple") == 1  # the table's text is not repeated as lines
    assert "<tr><td>apple</td><td>3</td><td>1.50</td></tr>" in reply.html
    data = json.loads(reply.json)
    assert data["table_count"] == 1
    tables = [t for s in data["document"]["sections"] for t in s["content"].get("tables", [])]
    assert tables[0]["headers"] == ["Item", "Qty", "Price"]


def test_pdf_cells_aligned_without_rules_become_a_table(parse: Parse) -> None:
    formats = [pb.OUTPUT_FORMAT_MARKDOWN, pb.OUTPUT_FORMAT_CSV, pb.OUTPUT_FORMAT_JSON]
    reply = parse(build.pdf_plain_columns(prose=True), "columns.pdf", formats=formats)
    rendered = table(build.PDF_TABLE_ROWS)
    assert (
        reply.markdown == f"## Page 1\n\n{build.PLAIN_INTRO}\n\n{rendered}\n\n{build.PLAIN_OUTRO}"
    )
    assert list(csv.reader(io.StringIO(reply.csv))) == build.PDF_TABLE_ROWS
    assert json.loads(reply.json)["table_count"] == 1


def test_pdf_short_lines_that_do_not_align_stay_lines(parse: Parse) -> None:
    reply = parse(build.pdf_plain_columns(aligned=False), "loose.pdf")
    assert "|" not in reply.markdown
    values = [value for row in build.PDF_TABLE_ROWS for value in row]
    assert sorted(reply.markdown.split()[3:]) == sorted(values)


def test_pdf_headings_come_from_font_size_and_weight(parse: Parse) -> None:
    formats = [pb.OUTPUT_FORMAT_MARKDOWN, pb.OUTPUT_FORMAT_JSON]
    reply = parse(build.pdf_structured(), "review.pdf", formats=formats)
    lines = reply.markdown.splitlines()
    for text, _size, level in build.PDF_HEADINGS:
        assert f"{'#' * level} {text}" in lines, (text, reply.markdown)
    assert sum(line.startswith("###") for line in lines) == len(build.PDF_HEADINGS)
    assert json.loads(reply.json)["heading_count"] == len(build.PDF_HEADINGS)


def test_pdf_two_columns_read_in_column_order(parse: Parse) -> None:
    from collections import Counter

    import pymupdf

    markdown = parse(build.pdf_structured(), "review.pdf").markdown
    page = markdown.split("## Page 2", 1)[1]
    assert page.index("left11") < page.index("right0")  # the whole left column first
    assert page.index("right11") < page.index("closing line")
    with pymupdf.open(stream=build.pdf_structured()) as source:
        layer = source[1].get_text()
    assert Counter(page.replace("#", " ").split()) == Counter(layer.split())


def test_pdf_chunks_carry_the_heading_path(parse: Parse) -> None:
    request = {"chunking": pb.ChunkingOptions(max_tokens=40)}
    chunks = parse(build.pdf_structured(), "review.pdf", **request).chunks
    paths = {tuple(c.heading_path) for c in chunks}
    assert ("Page 1", "Annual Orchard Review", "Growing Season", "Key findings") in paths
    assert ("Page 2", "Two Column Notes") in paths


def test_pdf_header_row_drawn_above_the_rules_joins_its_table(parse: Parse) -> None:
    header = ["Name", "Count", "Unit price"]
    reply = parse(build.pdf_ruled_table(header_above=header), "above.pdf")
    assert table([header, *build.PDF_TABLE_ROWS]) in reply.markdown
    assert "Unit price\n" not in reply.markdown  # not also a line


def test_pdf_caption_above_the_rules_stays_a_line(parse: Parse) -> None:
    caption = "Table 1 lists what the stall sold on Saturday morning"
    reply = parse(build.pdf_ruled_table(caption=caption), "caption.pdf")
    assert f"{caption}\n\n{table(build.PDF_TABLE_ROWS)}" in reply.markdown
