"""XLSX: our own markdown on openpyxl.

docstrange 1.1.6 reads workbooks through pandas, which eats a one-row sheet as its
header, invents ``Unnamed: 0`` headers, turns ``NA`` / ``N/A`` / ``NULL`` into empty
cells and ``17`` into ``17.0``. This writes every sheet as ``## Sheet: name`` and a
table of the values as stored, under the --doc-max-cells budget (worker/limits.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..domain import Extraction, ParseJob
from . import docstrange
from .markdown_tables import Office, sheet_value, table, trimmed


def read(job: ParseJob, model_dir: Path) -> Extraction:
    """The registry's reader for .xlsx: our walker, docstrange's processor for a file not
    named for its type."""
    return docstrange.walk_or_convert(
        job, "openpyxl", lambda j: xlsx_markdown(j.path, j.xlsx_max_cells)
    )


def xlsx_markdown(path: str, max_cells: int = 0) -> Office:
    """Every sheet's used range, the first row as the header, values as stored; a
    workbook spanning more than ``max_cells`` cells is refused before it is read."""
    import openpyxl

    from ..worker.limits import check_xlsx_cells

    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        check_xlsx_cells(workbook, max_cells)
        names = list(workbook.sheetnames)
        parts, warnings = [], []
        metadata: dict[str, Any] = {
            "sheet_count": len(names),
            "sheet_names": names,
            "extractor": "openpyxl",
        }
        for name in names:
            sheet = workbook[name]
            values = sheet.iter_rows(values_only=True)
            rows = trimmed([[sheet_value(v) for v in row] for row in values])
            if not rows:
                warnings.append(f"sheet {name!r} is empty and was skipped")
                continue
            parts.append(f"## Sheet: {name}\n\n{table(rows)}")
            metadata[f"sheet_{name}_rows"] = len(rows) - 1
            metadata[f"sheet_{name}_columns"] = len(rows[0])
    finally:
        workbook.close()
    return Office("\n\n".join(parts), metadata, sheet_count=len(names), warnings=warnings)
