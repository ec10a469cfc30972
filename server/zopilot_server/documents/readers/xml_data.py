"""XML documents (.xml): every element's text and attributes, one line each.

There is no general mapping from XML to headings and tables, so the reader keeps what
retrieval needs: each element that carries text or attributes becomes a line
``name (attr=value, ...): text`` in document order, its text being its own text (not its
children's, which get lines of their own) and the text that follows its children.
Parsed with the hardened parser (readers/common.py): no DTDs, entities or network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..domain import Extraction, ParseJob
from .common import localname, parse_xml, words

MAX_ATTRIBUTES = 32


def read(job: ParseJob, model_dir: Path) -> Extraction:
    with open(job.path, "rb") as handle:
        root = parse_xml(handle.read(), "the XML document")
    lines: list[str] = []
    elements = 0
    for element in root.iter():
        name = localname(element)
        if not name:
            continue
        elements += 1
        text = words("".join([element.text or "", *(c.tail or "" for c in element)]))
        attributes = [f"{localname_of(k)}={words(v)}" for k, v in element.attrib.items()]
        if not text and not attributes:
            continue
        shown = ", ".join(attributes[:MAX_ATTRIBUTES])
        head = f"{name} ({shown})" if shown else name
        lines.append(f"{head}: {text}" if text else head)
    metadata = {"extractor": "lxml", "root": localname(root), "element_count": elements}
    return Extraction("\n\n".join(lines), "zopilot:xml", metadata)


def localname_of(key: Any) -> str:
    return str(key).rsplit("}", 1)[-1]
