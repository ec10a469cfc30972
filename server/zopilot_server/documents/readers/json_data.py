"""JSON documents (.json): records as a table, anything else as an indented code block.

A list of flat objects (the usual export of rows) becomes one markdown table, columns
in the order keys first appear; any other value is pretty-printed in a ```json block,
which keeps every key and value and which chunking cuts only between lines. Nesting
deeper than Python's recursion limit (about 1000 levels) is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..domain import DocumentRejected, Extraction, ParseJob
from . import markdown_tables

MAX_TABLE_COLUMNS = 256


def read(job: ParseJob, model_dir: Path) -> Extraction:
    with open(job.path, encoding="utf-8-sig") as handle:
        text = handle.read()
    try:
        data = json.loads(text)
    except RecursionError as exc:
        raise DocumentRejected("content", "the JSON nests too deep to read") from exc
    except ValueError as exc:  # JSONDecodeError; a number past int's digit limit
        raise DocumentRejected("content", f"is not valid JSON: {exc}") from exc
    rows = _records(data)
    metadata: dict[str, Any] = {"extractor": "json", "top_level": type(data).__name__}
    if rows is not None:
        metadata["row_count"] = len(rows) - 1
        return Extraction(markdown_tables.table(rows), "zopilot:json", metadata)
    pretty = json.dumps(data, indent=2, ensure_ascii=False)
    fence = "```"
    while fence in pretty:
        fence += "`"
    return Extraction(f"{fence}json\n{pretty}\n{fence}", "zopilot:json", metadata)


def _records(data: Any) -> list[list[str]] | None:
    """Header + rows when ``data`` is a non-empty list of objects with scalar values."""
    if not isinstance(data, list) or not data or not all(isinstance(r, dict) for r in data):
        return None
    columns: dict[str, None] = {}
    for record in data:
        for key, value in record.items():
            if isinstance(value, (dict, list)):
                return None
            columns.setdefault(key, None)
    if len(columns) > MAX_TABLE_COLUMNS:
        return None
    names = list(columns)
    return [names] + [[_scalar(r.get(name)) for name in names] for r in data]


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
