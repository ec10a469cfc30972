"""DocumentParse ``csv_neutralize_formulas``: csv cells a spreadsheet would run, made text.

Applied in the server process to the csv output the parser worker wrote (outputs.to_csv),
so it needs neither docstrange nor a change to what the worker returns.
"""

from __future__ import annotations

import csv
import io
import re

# OWASP "CSV Injection": a cell starting with one of these may run as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_TABLE_SEPARATOR = re.compile(r"=== Table \d+ ===")  # written by outputs.to_csv itself


def neutralize_formulas(text: str) -> str:
    """``text`` (csv) with every formula-looking cell prefixed by ``'``, so a spreadsheet
    shows ``=HYPERLINK(...)`` or ``@SUM(...)`` as text instead of running it. Negative
    numbers get the prefix too (they start with ``-``); to_csv's table separators stay."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in csv.reader(io.StringIO(text)):
        if len(row) == 1 and _TABLE_SEPARATOR.fullmatch(row[0]):
            writer.writerow(row)
            continue
        writer.writerow(["'" + cell if cell.startswith(_FORMULA_START) else cell for cell in row])
    return buffer.getvalue()
