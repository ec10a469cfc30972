"""Budgets a document must fit before a parser expands it (runs in the parser worker).

A spreadsheet's cost is not its file size: openpyxl's read-only reader fills every row
of a sheet's used range out to its full width, and markdown_tables.py's table pads every row to
the widest one, so a 4.7 KB XLSX whose cells are A1 and XFD1048576 (or whose
``<dimension>`` merely claims that range) asks for 17 billion cells. The worker's memory
cap (--doc-worker-memory-mib) would stop it after gigabytes and seconds; the cell budget
(--doc-max-cells) refuses it first, with INVALID_ARGUMENT naming the limit.

The count is an upper bound of what the reader will produce, taken while streaming each
worksheet's XML in chunks (constant memory, one regex pass, no XML tree): per sheet the
largest of its declared dimension's area, the bounding box of the cells it holds (rows x
columns, from their references) and the number of cells. It stops as soon as the budget
is passed, so a bomb costs the time to read up to the budget, not the whole file.
"""

from __future__ import annotations

import re
from typing import IO, Any

CELLS_FLAG = "--doc-max-cells"
CHUNK_BYTES = 1024 * 1024
# A tag longer than this is no cell or row tag worth counting (a cell tag is a few dozen
# bytes); dropping it keeps a giant attribute from being re-copied chunk after chunk.
MAX_TAG_BYTES = 64 * 1024
# <row ...> and <c ...> start tags, with or without a namespace prefix; group 2: attributes.
_TAG = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?(row|c)(?=[\s/>])([^<>]*)")
_REF = re.compile(rb"""(?:^|\s)r\s*=\s*["']\$?([A-Za-z]*)\$?(\d*)["']""")
# The fast path: a whole chunk at C speed when its tags have no namespace prefix and every
# row and cell names its position (Excel and openpyxl write them so). ``\b`` keeps
# <rowBreaks>, <col>, <cfRule>... out; anything odd only sends the chunk to the slow path.
_ROWS = re.compile(rb"<row\b")
_CELLS = re.compile(rb"<c\b")
_ROW_NUMBERS = re.compile(rb"""<row\b[^<>]*?\sr\s*=\s*["'](\d+)""")
_CELL_COLUMNS = re.compile(rb"""<c\b[^<>]*?\sr\s*=\s*["']\$?([A-Za-z]+)""")
_MAX_LETTERS = 7  # past Excel's XFD already; longer references count as this wide


class CellBudgetExceeded(ValueError):
    """The workbook spans more cells than --doc-max-cells allows (INVALID_ARGUMENT)."""


def check_xlsx_cells(workbook: Any, max_cells: int) -> int:
    """Raise CellBudgetExceeded when the sheets of an openpyxl read-only ``workbook``
    span more than ``max_cells`` cells together; return the count (0: no budget)."""
    if max_cells <= 0:
        return 0
    total = 0
    for sheet in workbook.worksheets:
        declared = (sheet.max_row or 0) * (sheet.max_column or 0)
        if total + declared > max_cells:
            _refuse(sheet.title, max_cells)
        # The same part openpyxl reads rows from (a private method, stable since 2.x).
        with sheet._get_source() as source:
            total += sheet_cells(source, declared, max_cells - total)
        if total > max_cells:
            _refuse(sheet.title, max_cells)
    return total


def _refuse(title: str, max_cells: int) -> None:
    raise CellBudgetExceeded(
        f"the workbook spans more than {max_cells} cells (at sheet {title[:40]!r}); "
        f"the limit is {CELLS_FLAG} {max_cells}"
    )


def sheet_cells(source: IO[bytes], declared: int, budget: int) -> int:
    """This sheet's cell count (see the module docstring); stops reading once the count
    is past ``budget`` (the caller then refuses)."""
    state = _Extent()
    carry = b""
    while chunk := source.read(CHUNK_BYTES):
        data = carry + chunk
        end = data.rfind(b">") + 1  # tags up to the last '>' are whole; the rest waits
        if not state.add_referenced(data, end):
            state.add_in_order(data, end)
        carry = data[end:]
        if len(carry) > MAX_TAG_BYTES:
            carry = b""
        if state.count(declared) > budget:
            break
    return state.count(declared)


class _Extent:
    """The rows, columns and cells seen so far in one sheet, and where the reader is."""

    def __init__(self) -> None:
        self.row = self.column = self.max_row = self.max_column = self.cells = 0

    def count(self, declared: int) -> int:
        # A row without cells still costs a row: count it as one cell wide.
        return max(declared, self.max_row * max(self.max_column, 1), self.cells)

    def add_referenced(self, data: bytes, end: int) -> bool:
        """Count a chunk in which every row and cell names its position (Excel and
        openpyxl always write them); False, counting nothing, when one does not."""
        if data.find(b":c", 0, end) >= 0 or data.find(b":row", 0, end) >= 0:
            return False  # perhaps prefixed tags (<x:c ...>): the slow path reads them
        rows = _ROW_NUMBERS.findall(data, 0, end)
        columns = _CELL_COLUMNS.findall(data, 0, end)
        if len(rows) != len(_ROWS.findall(data, 0, end)):
            return False
        cells = len(_CELLS.findall(data, 0, end))
        if len(columns) != cells:
            return False
        if rows:
            self.row = _number(rows[-1])
            self.max_row = max(self.max_row, max(map(_number, set(rows))))
        if columns:
            self.column = _column(columns[-1])
            self.max_column = max(self.max_column, max(map(_column, set(columns))))
        self.cells += cells
        return True

    def add_in_order(self, data: bytes, end: int) -> None:
        """Count a chunk tag by tag, as openpyxl reads it: a row or cell without a
        reference comes right after the previous one."""
        for match in _TAG.finditer(data, 0, end):
            kind, attributes = match.groups()
            ref = _REF.search(attributes)
            letters, digits = ref.groups() if ref else (b"", b"")
            if kind == b"row":
                self.row = _number(digits) if digits else self.row + 1
                self.column = 0
            else:
                self.cells += 1
                self.column = _column(letters) if letters else self.column + 1
            self.max_row = max(self.max_row, self.row)
            self.max_column = max(self.max_column, self.column)


def _number(digits: bytes) -> int:
    """A row number; absurdly long ones (past int()'s digit limit) as merely huge."""
    return int(digits) if len(digits) <= 12 else 10**12


def _column(letters: bytes) -> int:
    """A column's number from its letters (A = 1, XFD = 16384)."""
    number = 0
    for letter in letters.upper()[:_MAX_LETTERS]:
        number = number * 26 + letter - 64
    return number
