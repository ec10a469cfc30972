"""What the readers share: a hardened XML parser and zip member access.

Every XML a reader parses (ODF content, EPUB packages and chapters, .xml documents)
goes through ``parse_xml``: no DTD loading, no entity expansion, no network, libxml2's
default depth and size guards (no ``huge_tree``), so an XXE payload reads as nothing
and a billion-laughs document does not expand. Zip members are read after detection
checked the container's declared expansion (server/detection.py).
"""

from __future__ import annotations

import zipfile
from typing import Any

from ..domain import DocumentRejected


def xml_parser() -> Any:
    from lxml import etree

    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def parse_xml(data: bytes, what: str) -> Any:
    """The root element of ``data``; INVALID_ARGUMENT naming ``what`` when it is not
    well-formed XML (or exceeds libxml2's depth limit)."""
    from lxml import etree

    try:
        root = etree.fromstring(data, parser=xml_parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise DocumentRejected("content", f"{what} is not well-formed XML: {exc}") from exc
    if root is None:
        raise DocumentRejected("content", f"{what} is empty")
    return root


def member(archive: zipfile.ZipFile, name: str, what: str) -> bytes:
    """A zip member's bytes; INVALID_ARGUMENT when it is missing or unreadable."""
    try:
        return archive.read(name)
    except KeyError as exc:
        raise DocumentRejected("content", f"the {what} has no {name[:100]!r}") from exc
    except (zipfile.BadZipFile, OSError, RuntimeError, EOFError, ValueError) as exc:
        raise DocumentRejected("content", f"the {what}'s {name[:100]!r} is corrupt: {exc}") from exc


def localname(element: Any) -> str:
    """An element's tag without its namespace ('' for comments and the like)."""
    tag = element.tag
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def words(text: str) -> str:
    """Whitespace runs as one space, trimmed."""
    return " ".join(text.split())
