"""RTF documents (.rtf): a small de-formatter, no RTF library.

RTF is plain 7-bit text: groups ``{...}``, control words ``\\word-12`` and escapes. The
reader keeps the text of the document body, drops the destinations that hold no body
text (font, colour and style tables, document info, pictures, fields' instructions,
every ``{\\* ...}`` group), decodes ``\\'hh`` bytes in the document's ``\\ansicpg`` code
page (cp1252 by default) and ``\\uN`` characters (skipping their ``\\ucN`` fallbacks),
and turns table rows (``\\cell`` ... ``\\row``) into a markdown table. Groups nest in a
list, not the call stack, so deep nesting costs memory, never a RecursionError.
Formatting (fonts, bold, lists' bullets) and pictures are not kept.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from ..domain import DocumentRejected, Extraction, ParseJob
from . import markdown_tables
from .common import words

_TOKEN = re.compile(
    r"\\([a-zA-Z]{1,32})(-?\d{1,10})? ?"  # a control word and its parameter
    r"|\\'([0-9a-fA-F]{2})"  # a byte in the code page
    r"|\\([^a-zA-Z])"  # a control symbol
    r"|([{}])"
    r"|([^\\{}\r\n]+)"  # text
    r"|[\r\n]+"  # line breaks in the file are not text
)
_SKIP_DESTINATIONS = frozenset({
    "fonttbl", "colortbl", "stylesheet", "info", "pict", "object", "fldinst", "themedata",
    "datastore", "latentstyles", "listtable", "listoverridetable", "rsidtbl", "generator",
    "header", "footer", "headerl", "headerr", "footerl", "footerr", "xmlnstbl", "filetbl",
    "revtbl", "mmathPr", "colorschememapping", "pgdsctbl", "operator", "author",
})  # fmt: skip
_SPECIAL = {"par": "\n", "line": "\n", "tab": "\t", "emdash": "\u2014", "endash": "\u2013",
            "bullet": "\u2022", "lquote": "\u2018", "rquote": "\u2019",
            "ldblquote": "\u201c", "rdblquote": "\u201d", "emspace": " ", "enspace": " ",
            "qmspace": " ", "~": "\u00a0", "-": "", "_": "-"}  # fmt: skip


def read(job: ParseJob, model_dir: Path) -> Extraction:
    with open(job.path, "rb") as handle:
        data = handle.read()
    text = data.decode("latin-1")  # RTF is 7-bit; stray 8-bit bytes stay as they are
    if not text.lstrip().startswith("{\\rtf"):
        raise DocumentRejected("content", "is not RTF (it does not start with {\\rtf)")
    markdown, tables = _deformat(text)
    metadata = {"extractor": "zopilot-rtf", "table_count": tables}
    warnings = ["rtf: formatting, pictures, headers and footers are not kept"]
    return Extraction(markdown, "zopilot:rtf", metadata, warnings=warnings)


class _State:
    """Per-group state: whether its text is skipped, and how many fallback characters
    follow a ``\\uN``."""

    __slots__ = ("skip", "uc")

    def __init__(self, skip: bool = False, uc: int = 1) -> None:
        self.skip, self.uc = skip, uc


def _deformat(text: str) -> tuple[str, int]:
    stack = [_State()]
    codepage = "cp1252"
    out: list[str] = []  # the current paragraph's pieces
    pending_bytes = bytearray()
    blocks: list[str] = []
    row: list[str] = []
    rows: list[list[str]] = []
    tables = 0
    skip_chars = 0
    group_start = False
    in_table = False

    def flush_bytes() -> None:
        if pending_bytes:
            out.append(pending_bytes.decode(codepage, "replace"))
            pending_bytes.clear()

    def end_paragraph() -> None:
        flush_bytes()
        if in_table:  # a paragraph break inside a cell: the cell goes on
            out.append(" ")
            return
        line = words("".join(out))
        out.clear()
        flush_table()
        if line:
            blocks.append(line)

    def flush_table() -> None:
        nonlocal tables
        if rows:
            blocks.append(markdown_tables.table(rows[:]))
            rows.clear()
            tables += 1

    for match in _TOKEN.finditer(text):
        word, number, hexbyte, symbol, brace, plain = match.groups()
        state = stack[-1]
        if brace == "{":
            flush_bytes()
            stack.append(_State(state.skip, state.uc))
            group_start = True
            continue
        if brace == "}":
            flush_bytes()
            if len(stack) > 1:
                stack.pop()
            group_start = False
            continue
        starts_group, group_start = group_start, False
        if skip_chars and (plain or hexbyte):
            if plain:
                take = min(skip_chars, len(plain))
                skip_chars -= take
                plain = plain[take:]
                if not plain:
                    continue
            else:
                skip_chars -= 1
                continue
        if word is not None:
            skip_chars = 0
            if word in _SKIP_DESTINATIONS:
                state.skip = True
            elif word == "ansicpg" and number:
                candidate = f"cp{number}"
                try:
                    codecs.lookup(candidate)
                    codepage = candidate
                except LookupError:
                    pass
            elif word == "uc" and number:
                state.uc = max(int(number), 0)
            elif state.skip:
                continue
            elif word == "u" and number:
                flush_bytes()
                value = int(number)
                out.append(chr(value + 65536 if value < 0 else value) if value != 0 else "")
                skip_chars = state.uc
            elif word == "intbl":
                in_table = True
            elif word == "cell":
                flush_bytes()
                row.append(words("".join(out)))
                out.clear()
            elif word == "row":
                flush_bytes()
                out.clear()
                if any(cell.strip() for cell in row):
                    rows.append(row[:])
                row.clear()
                in_table = False
            elif word in ("par", "sect", "page"):
                end_paragraph()
            elif word in _SPECIAL:
                out.append(_SPECIAL[word])
            continue
        if symbol is not None:
            if symbol == "*" and starts_group:
                state.skip = True
            elif not state.skip:
                if symbol in "\\{}":
                    flush_bytes()
                    out.append(symbol)
                elif symbol in _SPECIAL:
                    out.append(_SPECIAL[symbol])
            continue
        if state.skip:
            continue
        if hexbyte is not None:
            pending_bytes.append(int(hexbyte, 16))
        elif plain:
            flush_bytes()
            out.append(plain)
    in_table = False
    end_paragraph()
    flush_table()
    return "\n\n".join(blocks), tables
