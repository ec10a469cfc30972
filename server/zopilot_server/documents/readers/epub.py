"""EPUB books (.epub): the spine's XHTML chapters, in reading order, as one HTML page.

The container (a zip, checked by server/detection.py) names its package document in
``META-INF/container.xml``; the package's spine lists the chapters. Each chapter is
parsed with the hardened XML parser (or, when it is not well-formed, lxml's HTML
parser, which never loads entities either), stripped of namespaces, scripts and styles,
and the bodies are joined into one HTML file that goes through the same HTML reader as
an uploaded ``.html`` (html_page.py: tables read by lxml, the text by
docstrange's HTMLProcessor). Not extracted: images, and resources the book encrypts.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ..domain import DocumentRejected, Extraction, ParseJob
from . import html_page
from .common import localname, member, parse_xml, words

_CONTAINER = "urn:oasis:names:tc:opendocument:xmlns:container"
_OPF = "http://www.idpf.org/2007/opf"
_DC = "http://purl.org/dc/elements/1.1/"
MAX_CHAPTERS = 10_000
_DROPPED = frozenset({"script", "style", "head", "noscript"})


def read(job: ParseJob, model_dir: Path) -> Extraction:
    from lxml import etree

    warnings: list[str] = []
    try:
        with zipfile.ZipFile(job.path) as archive:
            package_name, package = _package(archive)
            chapters, images = _chapters(archive, package_name, package, warnings)
            if "META-INF/encryption.xml" in archive.namelist():
                warnings.append("epub: some resources are encrypted (DRM) and could not be read")
    except zipfile.BadZipFile as exc:
        raise DocumentRejected("content", f"is not a valid EPUB file: {exc}") from exc
    title = words(package.findtext(f".//{{{_DC}}}title") or "")
    bodies = [etree.tostring(body, encoding="unicode", method="html") for body in chapters]
    page = (
        f"<html><head><meta charset='utf-8'><title></title></head><body>"
        f"{''.join(bodies)}</body></html>"
    )
    html_path = os.path.join(os.path.dirname(job.path), "epub-chapters.html")
    with open(html_path, "w", encoding="utf-8") as handle:
        handle.write(page)
    html_job = dataclasses.replace(job, path=html_path, doc_type="html")
    try:
        extraction = html_page.read(html_job, model_dir)
    finally:
        os.unlink(html_path)
    extraction.method = "zopilot:epub+" + extraction.method
    extraction.metadata.update(extractor="zopilot-epub", chapter_count=len(chapters))
    if title:
        extraction.metadata["title"] = title
    if images:
        warnings.append(f"epub: {images} image(s) not extracted (not OCRed)")
    extraction.warnings += warnings
    return extraction


def _package(archive: zipfile.ZipFile) -> tuple[str, Any]:
    container = parse_xml(member(archive, "META-INF/container.xml", "EPUB"), "container.xml")
    rootfile = container.find(f".//{{{_CONTAINER}}}rootfile")
    name = rootfile.get("full-path") if rootfile is not None else None
    if not name:
        raise DocumentRejected("content", "the EPUB's container.xml names no package document")
    return name, parse_xml(member(archive, name, "EPUB"), "the EPUB package document")


def _chapters(
    archive: zipfile.ZipFile, package_name: str, package: Any, warnings: list[str]
) -> tuple[list[Any], int]:
    """The spine's chapter bodies, and how many images the manifest lists."""
    base = posixpath.dirname(package_name)
    manifest: dict[str, tuple[str, str]] = {}
    images = 0
    for item in package.iter(f"{{{_OPF}}}item"):
        href, media = item.get("href") or "", item.get("media-type") or ""
        manifest[item.get("id") or ""] = (href, media)
        images += media.startswith("image/")
    spine = [ref.get("idref") or "" for ref in package.iter(f"{{{_OPF}}}itemref")]
    if len(spine) > MAX_CHAPTERS:
        raise DocumentRejected(
            "content", f"the EPUB's spine lists {len(spine)} chapters; at most {MAX_CHAPTERS}"
        )
    names = set(archive.namelist())
    bodies = []
    for idref in spine:
        href, _media = manifest.get(idref, ("", ""))
        name = posixpath.normpath(posixpath.join(base, unquote(href.split("#", 1)[0])))
        if not href or name not in names:
            warnings.append(f"epub: spine item {idref[:60]!r} is missing from the book")
            continue
        bodies.append(_body(archive.read(name), name))
    return [b for b in bodies if b is not None], images


def _body(data: bytes, name: str) -> Any:
    """A chapter's <body>, namespaces, scripts and styles removed (None if it has none)."""
    from lxml import etree, html

    try:
        root = parse_xml(data, name)
    except DocumentRejected:
        try:
            root = html.document_fromstring(data, parser=html.HTMLParser(encoding="utf-8"))
        except (etree.ParserError, ValueError):
            return None  # empty or unreadable: the chapter has no text
    for element in list(root.iter()):
        if not isinstance(element.tag, str):
            continue
        element.tag = localname(element)
        if element.tag in _DROPPED and element.getparent() is not None:
            element.getparent().remove(element)
    etree.cleanup_namespaces(root)
    body = root if root.tag == "body" else root.find(".//body")
    if body is None:
        return None
    body.tag = "section"
    return body
