"""HTML: docstrange's HTMLProcessor for the text, our lxml walk for the tables.

Also the reader that eml.py (an HTML body) and epub.py (the chapters) hand their HTML
to, so e-mail and e-books read exactly as an uploaded ``.html``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..domain import Extraction, ParseJob
from . import docstrange
from .markdown_tables import table

_BLANK_LINES = re.compile(r"\n{3,}")


def read(job: ParseJob, model_dir: Path) -> Extraction:
    """The registry's reader for .html: docstrange reads the page with its tables taken
    out (``html_tables``), and our markdown tables go back in their place."""
    path = job.path.removesuffix(".html") + "-untabled.html"
    try:
        tables = html_tables(job.path, path)
    except Exception as exc:  # lxml raises many types on hostile markup
        raise docstrange.rejected(job, exc) from exc
    if tables is None:
        return docstrange.convert(job)
    try:
        extraction = docstrange.convert(job, path)
    finally:
        os.unlink(path)
    if tables:
        extraction.markdown = _tables_back(extraction.markdown, tables)
    return extraction


def _tables_back(markdown: str, tables: list[str]) -> str:
    """Our HTML tables in place of their tokens, each a block of its own; a table whose
    token docstrange dropped (it skips some containers) is appended, not lost."""
    for number, rendered in enumerate(tables):
        token = TABLE_TOKEN.format(number)
        if token not in markdown:
            markdown += f"\n\n{rendered}"
            continue
        markdown = re.sub(rf"[ \t]*{token}[ \t]*", lambda _m, t=rendered: f"\n\n{t}\n\n", markdown)
    return _BLANK_LINES.sub("\n\n", markdown).strip()


TABLE_TOKEN = "ZOPILOTTABLE{}X"
_HTML_LINE_ENDS = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6"})


def html_tables(path: str, out_path: str) -> list[str] | None:
    """Take the outermost ``<table>``s out of an HTML file, as markdown tables.

    docstrange's HTMLProcessor (markdownify) runs tables into each other and into the
    text before them (so its JSON misses them), gives header-less tables an empty
    header and leaves ``|`` in cells unescaped, which shifts columns. Each table is
    replaced by a paragraph holding ``TABLE_TOKEN`` and the rest written to ``out_path``
    for docstrange; ``read`` puts our tables back in place of the tokens. None when
    the file has no table (docstrange then reads the file as it is).
    """
    import lxml.html

    with open(path, "rb") as handle:
        content = handle.read()
    if b"<table" not in content.lower():
        return None
    tree = lxml.html.document_fromstring(content, parser=lxml.html.HTMLParser(encoding="utf-8"))
    outermost = [
        t for t in tree.iter("table") if not any(a.tag == "table" for a in t.iterancestors())
    ]
    if not outermost:
        return None
    tables = []
    for number, element in enumerate(outermost):
        tables.append(table(_html_rows(element)))
        marker = lxml.html.Element("p")
        marker.text = TABLE_TOKEN.format(number)
        marker.tail = element.tail
        element.getparent().replace(element, marker)
    with open(out_path, "wb") as handle:
        handle.write(lxml.html.tostring(tree, encoding="utf-8"))
    return tables


def _html_rows(element: Any) -> list[list[str]]:
    rows = []
    for row in element.xpath("./tr|./thead/tr|./tbody/tr|./tfoot/tr"):
        cells = []
        for html_cell in row.xpath("./td|./th"):
            cells.append(_html_cell_text(html_cell))
            span = str(html_cell.get("colspan") or "1")
            cells.extend([""] * (min(int(span), 100) - 1 if span.isdigit() else 0))
        if cells:
            rows.append(cells)
    return rows


def _html_cell_text(html_cell: Any) -> str:
    """A cell's text; ``<br>`` and block elements end a line; nested tables flattened."""
    for node in html_cell.iter():
        if node is html_cell or not isinstance(node.tag, str):
            continue
        if node.tag in _HTML_LINE_ENDS:
            node.tail = "\n" + (node.tail or "")
        elif node.tag in {"td", "th"}:
            node.tail = " / " + (node.tail or "")
        elif node.tag in {"script", "style"}:
            node.text = ""
    return "".join(html_cell.itertext()).strip().strip("/").strip()
