"""The markdown every reader writes tables and sheet values in, and the result our own
walkers return: one module that the docx, pptx, xlsx, csv, html, pdf, odf, rtf, xls and
json readers all import, so every format's tables escape and pad cells the same way.

Table cells are escaped for markdown: ``|`` as ``\\|`` and a line break as ``<br>``;
outputs.py turns them back into the cell's text for csv and text.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Office:
    """Markdown for one document plus the counts and warnings the client sees."""

    markdown: str
    metadata: dict[str, Any] = field(default_factory=dict)
    sheet_count: int = 0
    slide_count: int = 0
    warnings: list[str] = field(default_factory=list)


def cell(text: str) -> str:
    """One table cell's text, escaped so it cannot break the markdown row."""
    lines = [" ".join(line.split()) for line in str(text).replace("\r\n", "\n").split("\n")]
    return "<br>".join(line for line in lines if line).replace("|", "\\|")


def table(rows: list[list[str]]) -> str:
    """A markdown table, the first row as its header; short rows padded."""
    width = max((len(row) for row in rows), default=0)
    if width == 0:
        return ""
    lines = []
    for number, row in enumerate(rows):
        cells = [cell(value) for value in row] + [""] * (width - len(row))
        lines.append("| " + " | ".join(cells) + " |")
        if number == 0:
            lines.append("| " + " | ".join(["---"] * width) + " |")
    return "\n".join(lines)


def sheet_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, datetime.datetime) and value.time() == datetime.time():
        return value.date().isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)


def trimmed(rows: list[list[str]]) -> list[list[str]]:
    """Rows without the empty rows and columns around the used range."""
    rows = [row for row in rows if any(v.strip() for v in row)]
    width = max((i + 1 for row in rows for i, v in enumerate(row) if v.strip()), default=0)
    return [row[:width] for row in rows]
