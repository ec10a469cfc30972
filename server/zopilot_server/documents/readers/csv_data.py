"""CSV: one table, every cell exactly as written (Python's csv module, no pandas).

docstrange 1.1.6 reads CSV through pandas, with the losses xlsx.py lists.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..domain import Extraction, ParseJob
from . import docstrange
from .markdown_tables import Office, table, trimmed

CSV_SNIFF_BYTES = 64 * 1024


def read(job: ParseJob, model_dir: Path) -> Extraction:
    """The registry's reader for .csv: our walker, docstrange's processor for a file not
    named for its type."""
    return docstrange.walk_or_convert(job, "csv", lambda j: csv_markdown(j.path, j.display_name))


def csv_markdown(path: str, display_name: str) -> Office:
    """The CSV as one table, every cell exactly as written (csv module, no pandas)."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        text = handle.read()
    try:
        dialect: Any = csv.Sniffer().sniff(text[:CSV_SNIFF_BYTES], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = trimmed(list(csv.reader(io.StringIO(text), dialect)))
    columns = rows[0] if rows else []
    metadata = {
        "row_count": max(len(rows) - 1, 0),
        "column_count": len(columns),
        "columns": columns,
        "extractor": "csv",
    }
    markdown = f"# CSV Data: {display_name}\n\n{table(rows) if rows else '*No data available*'}"
    return Office(markdown, metadata, sheet_count=1)
