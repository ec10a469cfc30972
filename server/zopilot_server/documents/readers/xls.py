"""Legacy Excel workbooks (.xls, BIFF5/8) through xlrd, written like the xlsx walker's.

xlrd 2.x reads only .xls (pure Python, no dependencies). Each sheet is a ``## Sheet:
name`` table of its used range, values as the xlsx walker shows them (whole numbers
without ``.0``, dates as ISO dates, TRUE / FALSE). The cell budget (--doc-max-cells)
is checked sheet by sheet from the dimensions xlrd read, before any cell is formatted.
Not kept: formulas (their cached value is), formatting, charts, comments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..domain import DocumentRejected, Extraction, ParseJob
from ..worker.limits import CELLS_FLAG
from . import markdown_tables


def read(job: ParseJob, model_dir: Path) -> Extraction:
    import xlrd

    try:
        book = xlrd.open_workbook(job.path, on_demand=True)
    except Exception as exc:
        raise DocumentRejected("content", f"could not parse the xls: {exc}"[:300]) from exc
    names = book.sheet_names()
    parts, warnings, cells = [], [], 0
    metadata: dict[str, Any] = {
        "sheet_count": len(names),
        "sheet_names": names,
        "extractor": "xlrd",
    }
    try:
        for index, name in enumerate(names):
            try:
                sheet = book.sheet_by_index(index)
            except Exception as exc:
                raise DocumentRejected("content", f"sheet {name[:40]!r} is corrupt: {exc}") from exc
            cells += sheet.nrows * sheet.ncols
            if job.xlsx_max_cells and cells > job.xlsx_max_cells:
                raise DocumentRejected(
                    "content",
                    f"the workbook spans more than {job.xlsx_max_cells} cells (at sheet "
                    f"{name[:40]!r}); the limit is {CELLS_FLAG} {job.xlsx_max_cells}",
                )
            rows = markdown_tables.trimmed(
                [[_value(cell, book.datemode) for cell in sheet.row(r)] for r in range(sheet.nrows)]
            )
            book.unload_sheet(index)
            if not rows:
                warnings.append(f"sheet {name!r} is empty and was skipped")
                continue
            parts.append(f"## Sheet: {name}\n\n{markdown_tables.table(rows)}")
            metadata[f"sheet_{name}_rows"] = len(rows) - 1
    finally:
        book.release_resources()
    extraction = Extraction("\n\n".join(parts), "zopilot:xlrd", metadata, warnings=warnings)
    extraction.sheet_count = len(names)
    return extraction


def _value(cell: Any, datemode: int) -> str:
    import xlrd

    kind, value = cell.ctype, cell.value
    if kind == xlrd.XL_CELL_DATE:
        try:
            return markdown_tables.sheet_value(xlrd.xldate_as_datetime(value, datemode))
        except (ValueError, OverflowError, xlrd.xldate.XLDateError):
            return str(value)
    if kind == xlrd.XL_CELL_BOOLEAN:
        return markdown_tables.sheet_value(bool(value))
    if kind == xlrd.XL_CELL_ERROR:
        return xlrd.error_text_from_code.get(value, "#ERR")
    if kind in (xlrd.XL_CELL_EMPTY, xlrd.XL_CELL_BLANK):
        return ""
    return markdown_tables.sheet_value(value)
