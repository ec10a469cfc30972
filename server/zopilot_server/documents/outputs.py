"""Turn docstrange's markdown into the formats a client asked for, offline and in linear time.

docstrange's own ``extract_data`` / ``extract_csv`` first look for an Ollama server on
localhost (a network call we forbid) and are quadratic in the number of table rows; its
``extract_html`` links Google Fonts (a page rendering it would call the network). So:
- json: docstrange's own MarkdownToJSONParser with our table reader; above
  ``JSON_LINEAR_ABOVE_ROWS`` table rows a subclass that also removes its quadratic step
  (same result, with a warning);
- csv: every markdown table, read line by line (empty cells kept, unlike docstrange),
  written with the csv module (a cell's ``<br>`` becomes a quoted newline again);
- html: html_render.py (escaped text, nh3 allowlist) in a minimal page, no remote assets;
- text: the markdown without its markup (headings, table rules, and emphasis markers
  only where they are markdown: ``first_name`` and ``2*3*4`` stay as written; table
  cells are never touched).
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from docstrange.result import MarkdownToJSONParser

from . import html_render
from .domain import OutputFormat

JSON_LINEAR_ABOVE_ROWS = 2000
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_TABLE_RULE = re.compile(r"^\s*\|[\s\-:|]+\|\s*$")
_BLANK_RUN = re.compile(r"\n{3,}")
_HEADING = re.compile(r"^#{1,6}\s+", re.MULTILINE)
_ESCAPED_HASH = re.compile(r"^(\s*)\\#")
# Emphasis only as markdown writes it: the markers at word edges, never inside a word.
_EMPHASIS = re.compile(r"(?<![\w*])(\*\*|__|\*|_)(?=[^\s*_])(.+?)(?<=[^\s*_])\1(?![\w*])")


class TableMarkdownToJSONParser(MarkdownToJSONParser):
    """docstrange's parser with our table reader: its regex merges tables separated by a
    blank line, drops empty cells (shifting the rest left), splits ``\\|`` inside a
    cell and drops header-only tables (a one-row sheet)."""

    def _extract_tables(self, content: str) -> list[dict[str, Any]]:
        return [
            {"headers": table[0], "rows": table[1:], "columns": len(table[0])}
            for table in markdown_tables(content)
            if any(cell for cell in table[0]) or len(table) > 1
        ]


class LinearMarkdownToJSONParser(TableMarkdownToJSONParser):
    """docstrange's parser without its quadratic paragraph step.

    ``_extract_paragraphs`` blanks every table row, then runs list patterns that start
    with ``^(\\s*)``: from every one of those blank lines the pattern rescans the whole
    run of blank lines below it, so N rows cost N^2. A run of three or more newlines
    splits paragraphs exactly like a run of two, so collapsing the runs after blanking
    the rows gives the same paragraphs in linear time.
    """

    def _extract_paragraphs(self, content: str) -> list[str]:
        blanked = re.sub(r"\|.*\|", "", content)
        return super()._extract_paragraphs(_BLANK_RUN.sub("\n\n", blanked))


def table_row_count(markdown: str) -> int:
    return sum(1 for line in markdown.splitlines() if _TABLE_ROW.match(line))


def to_json(markdown: str, metadata: dict[str, Any], warnings: list[str]) -> str:
    """docstrange's structured JSON (sections, paragraphs, lists, tables) plus metadata."""
    rows = table_row_count(markdown)
    parser: MarkdownToJSONParser = TableMarkdownToJSONParser()
    if rows > JSON_LINEAR_ABOVE_ROWS:
        parser = LinearMarkdownToJSONParser()
        warnings.append(
            f"json: {rows} table rows; built with a linear-time variant of docstrange's "
            f"parser (docstrange's extract_data is quadratic above ~{JSON_LINEAR_ABOVE_ROWS} "
            "rows)"
        )
    data = {**_parse_keeping_preamble(parser, markdown), **metadata, "format": "structured_json"}
    return json.dumps(data, ensure_ascii=False, default=str)


def _parse_keeping_preamble(parser: MarkdownToJSONParser, markdown: str) -> dict[str, Any]:
    """docstrange's parse, plus the text before the first heading, which it drops when
    the document has any heading: as a first "Content" section, the title docstrange
    itself gives a document without headings."""
    first = _HEADING.search(markdown)
    preamble = markdown[: first.start()] if first else ""
    if not first or not preamble.strip():
        return parser.parse(markdown)
    head = parser.parse(preamble)["document"]
    data = parser.parse(markdown[first.start() :])
    document = data["document"]
    document["sections"] = head["sections"] + document["sections"]
    meta, extra = document.setdefault("metadata", {}), head.get("metadata", {})
    meta["total_sections"] = meta.get("total_sections", 0) + extra.get("total_sections", 0)
    for key, value in extra.items():
        if key.startswith("has_"):
            meta[key] = bool(meta.get(key)) or bool(value)
    return data


def markdown_tables(markdown: str) -> Iterator[list[list[str]]]:
    """Each markdown table as rows of cells (header first, the |---| rule dropped)."""
    table: list[list[str]] = []
    for line in markdown.splitlines():
        if _TABLE_ROW.match(line):
            if not _TABLE_RULE.match(line) or not table:
                table.append(_cells(line))
            continue
        if table:
            yield table
            table = []
    if table:
        yield table


def _cells(line: str) -> list[str]:
    """A row's cells as their text: ``\\|`` is a pipe and ``<br>`` a line break."""
    return [cell.replace("<br>", "\n") for cell in html_render.cells(line)]


def to_csv(markdown: str, warnings: list[str]) -> str:
    """All tables as CSV, separated like docstrange's ``include_all_tables`` output."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    count = 0
    for count, table in enumerate(markdown_tables(markdown), start=1):
        if count > 1:
            writer.writerows([[], [f"=== Table {count} ==="], []])
        writer.writerows(table)
    if count == 0:
        warnings.append("csv: the document has no tables; csv is empty")
    return buffer.getvalue()


def to_html(markdown: str, title: str) -> str:
    """A self-contained, sanitized HTML page (no scripts, handlers or remote content)."""
    body = html_render.body(markdown)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def to_text(markdown: str) -> str:
    """Plain text: headings, emphasis and table rules dropped, table cells tab-separated."""
    lines = []
    for line in markdown.splitlines():
        if _TABLE_RULE.match(line) and "-" in line:
            continue
        if _TABLE_ROW.match(line):
            lines.append("\t".join(c.replace("\n", " ") for c in _cells(line)))
        else:
            line = _ESCAPED_HASH.sub(r"\1#", _HEADING.sub("", line))
            lines.append(_EMPHASIS.sub(r"\2", line))
    return "\n".join(lines)


Renderer = Callable[[str, dict[str, Any], list[str]], str]


def render(
    markdown: str,
    formats: tuple[OutputFormat, ...],
    *,
    title: str,
    metadata: dict[str, Any],
    warnings: list[str],
) -> dict[OutputFormat, str]:
    """Every requested format, rendered from the one markdown docstrange produced."""
    renderers: dict[OutputFormat, Renderer] = {
        OutputFormat.MARKDOWN: lambda md, _m, _w: md,
        OutputFormat.TEXT: lambda md, _m, _w: to_text(md),
        OutputFormat.HTML: lambda md, _m, _w: to_html(md, title),
        OutputFormat.JSON: to_json,
        OutputFormat.CSV: lambda md, _m, w: to_csv(md, w),
    }
    return {fmt: renderers[fmt](markdown, metadata, warnings) for fmt in formats}
