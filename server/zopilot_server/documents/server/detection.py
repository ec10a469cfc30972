"""Which parser a document needs: from its extension or MIME type, checked by magic bytes.

The client's filename only ever chooses a type; the bytes must agree with it (a .docx
that is really a PDF, or random bytes called .pdf, is rejected here, before any parser
sees it). Text formats are normalised to UTF-8 because docstrange's HTML and CSV readers
accept nothing else. OOXML containers are opened here (the central directory only, which
is cheap) so that truncated zips and zip bombs never reach a worker.
"""

from __future__ import annotations

import codecs
import io
import os
import zipfile
from dataclasses import dataclass, field

from ..domain import DocumentRejected
from ..formats import (
    BY_EXTENSION,
    BY_MIME,
    BY_NAME,
    LEGACY_OFFICE,
    SUPPORTED_EXTENSIONS,
    TYPES,
    DocType,
    Family,
    Limit,
)

MIB = 1024 * 1024
# An OOXML file may expand to at most this much XML, and to at most MAX_EXPANSION_RATIO
# times its own size once past EXPANSION_FREE_BYTES: beyond either we call it a zip bomb
# (parsers hold several times the XML in memory; see also --doc-worker-memory-mib).
MAX_EXPANDED_BYTES = 256 * MIB
MAX_EXPANSION_RATIO = 100
EXPANSION_FREE_BYTES = 16 * MIB
# An ODF / EPUB "mimetype" member is one short line; a larger one is no such container.
MAX_MIMETYPE_BYTES = 256
# How far into a text document we look for NUL bytes (binary content).
TEXT_SNIFF_BYTES = 64 * 1024
# charset-normalizer's names for the code pages a Western European text is usually in.
WESTERN_ENCODINGS = frozenset({"cp1252", "latin_1", "iso8859_15"})
# Bytes a PDF may carry before its "%PDF-" header (a BOM, whitespace).
PDF_LEADING_JUNK = b"\x00\t\n\r\f \xef\xbb\xbf"


GENERIC_MIME_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


@dataclass
class Detected:
    """A validated document: its type, its (possibly re-encoded) bytes and any warnings."""

    doc_type: DocType
    content: bytes
    warnings: list[str] = field(default_factory=list)


def detect(filename: str, mime_type: str, content: bytes) -> Detected:
    """Resolve the type (extension, else MIME type, else magic bytes) and check the bytes."""
    doc_type = _declared_type(filename, mime_type) or _sniff_or_reject(content)
    return _check_content(doc_type, content)


def _declared_type(filename: str, mime_type: str) -> DocType | None:
    ext = os.path.splitext(os.path.basename(filename.replace("\\", "/")))[1].lower()
    if ext:
        if ext in BY_EXTENSION:
            return BY_EXTENSION[ext]
        if ext in LEGACY_OFFICE:
            raise DocumentRejected(
                "filename",
                f"legacy Office format {ext} is not supported; save it as {LEGACY_OFFICE[ext]}",
            )
        raise DocumentRejected(
            "filename", f"unsupported extension {ext!r}; supported: {SUPPORTED_EXTENSIONS}"
        )
    mime = mime_type.split(";", 1)[0].strip().lower()
    if mime in BY_MIME:
        return BY_MIME[mime]
    if mime not in GENERIC_MIME_TYPES:
        raise DocumentRejected("mime_type", f"unsupported MIME type {mime!r}")
    return None


def _sniff_or_reject(content: bytes) -> DocType:
    sniffed = sniff(content)
    if sniffed is None:
        raise DocumentRejected(
            "filename",
            "cannot tell the document type: send a filename with an extension "
            f"({SUPPORTED_EXTENSIONS}) or a mime_type",
        )
    return sniffed


def sniff(content: bytes) -> DocType | None:
    """The binary type the bytes announce (PDF, a zip type, an image, ...), if any."""
    if content[:1024].lstrip(PDF_LEADING_JUNK).startswith(b"%PDF-"):
        return BY_NAME["pdf"]
    if content.startswith(b"PK\x03\x04"):
        return _zip_type(content)
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return BY_NAME["webp"]
    # "BM" alone starts plenty of text; a real BMP header has four reserved zero bytes.
    if content[:2] == b"BM" and content[6:10] == b"\0\0\0\0":
        return BY_NAME["bmp"]
    return next((t for t in TYPES if t.magic and content.startswith(t.magic)), None)


def _zip_type(content: bytes) -> DocType | None:
    """The zip type an archive is: by its marker member (OOXML) or by what its
    ``mimetype`` member says (ODF, EPUB)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return _zip_type_of(archive)
    except (zipfile.BadZipFile, ValueError, OSError, RuntimeError, EOFError):
        return None


def _zip_type_of(archive: zipfile.ZipFile) -> DocType | None:
    names = set(archive.namelist())
    marked = next((t for t in TYPES if t.zip_marker and t.zip_marker in names), None)
    if marked is not None or "mimetype" not in names:
        return marked
    info = archive.getinfo("mimetype")
    if info.file_size > MAX_MIMETYPE_BYTES:
        return None
    declared = archive.read(info).decode("ascii", "replace").strip()
    return next((t for t in TYPES if t.zip_mimetype and t.zip_mimetype == declared), None)


def _check_content(doc_type: DocType, content: bytes) -> Detected:
    if not content:
        raise DocumentRejected("content", "is empty")
    if doc_type.family is Family.TEXT:
        return _check_text(doc_type, content)
    if doc_type.family is Family.RAW_TEXT:
        return _check_raw_text(doc_type, content)
    if doc_type.family is Family.ZIP:
        _check_zip(doc_type, content)
    elif sniff(content) is not doc_type:
        _mismatch(doc_type, content)
    return Detected(doc_type, content)


def _mismatch(doc_type: DocType, content: bytes) -> None:
    actual = sniff(content)
    looks = f"; it looks like {actual.name}" if actual else ""
    raise DocumentRejected(
        "content", f"does not match the declared type {doc_type.name} (magic bytes){looks}"
    )


def _check_zip(doc_type: DocType, content: bytes) -> None:
    if not content.startswith(b"PK\x03\x04"):
        _mismatch(doc_type, content)
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            infos = archive.infolist()
            found = _zip_type_of(archive)
    except (zipfile.BadZipFile, ValueError, OSError, RuntimeError, EOFError) as exc:
        raise DocumentRejected(
            "content", f"is not a valid {doc_type.name} file: corrupt or truncated zip ({exc})"
        ) from exc
    if found is not doc_type:
        _mismatch(doc_type, content)
    if Limit.EXPANSION not in doc_type.limits:
        return
    expanded = sum(info.file_size for info in infos)
    limit = min(MAX_EXPANDED_BYTES, max(EXPANSION_FREE_BYTES, MAX_EXPANSION_RATIO * len(content)))
    if expanded > limit:
        raise DocumentRejected(
            "content",
            f"the {doc_type.name} file expands to {expanded} bytes, over the {limit} byte "
            f"limit (at most {MAX_EXPANSION_RATIO}x its size, never over "
            f"{MAX_EXPANDED_BYTES} bytes)",
        )


def _check_text(doc_type: DocType, content: bytes) -> Detected:
    binary = sniff(content)
    if binary is not None and binary.family is not Family.TEXT:
        _mismatch(doc_type, content)
    text, encoding = _decode(content)
    if doc_type.magic and not text.lstrip("\ufeff \t\r\n").encode().startswith(doc_type.magic):
        _mismatch(doc_type, content)
    if "\x00" in text[:TEXT_SNIFF_BYTES]:
        raise DocumentRejected("content", f"is binary (NUL bytes), not {doc_type.name} text")
    if encoding == "utf-8":
        return Detected(doc_type, content)
    warning = f"content is not UTF-8; decoded as {encoding}"
    return Detected(doc_type, text.encode("utf-8"), [warning])


def _check_raw_text(doc_type: DocType, content: bytes) -> Detected:
    """Text that names its own encodings: not binary, starting with its magic if it
    has one; the bytes go to the reader as sent."""
    binary = sniff(content)
    if binary is not None and binary.family not in (Family.TEXT, Family.RAW_TEXT):
        _mismatch(doc_type, content)
    utf16 = content.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    if not utf16 and b"\x00" in content[:TEXT_SNIFF_BYTES]:
        raise DocumentRejected("content", f"is binary (NUL bytes), not {doc_type.name} text")
    if doc_type.magic and not content.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(doc_type.magic):
        _mismatch(doc_type, content)
    return Detected(doc_type, content)


def _decode(content: bytes) -> tuple[str, str]:
    """Text and the encoding it was read with: UTF-16 by BOM, UTF-8, the detected one,
    cp1252, latin-1."""
    if content.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return content.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            pass
    try:
        return content.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    guessed = _detected_encoding(content)
    if guessed is not None:
        return guessed
    try:
        return content.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return content.decode("latin-1"), "latin-1"


def _detected_encoding(content: bytes) -> tuple[str, str] | None:
    """charset-normalizer's guess (Shift-JIS, GB18030, cp1251, cp1250, ...). Where
    cp1252 is among its plausible candidates it wins: short Western texts fit several
    single-byte code pages equally well, and cp1252 is by far the most common of them."""
    import charset_normalizer

    matches = charset_normalizer.from_bytes(content[:TEXT_SNIFF_BYTES])
    candidates = [match.encoding for match in matches]
    if not candidates:
        return None
    if WESTERN_ENCODINGS.intersection(candidates):
        try:
            return content.decode("cp1252"), "cp1252"
        except UnicodeDecodeError:
            pass
    try:
        return content.decode(candidates[0]), candidates[0]
    except (UnicodeDecodeError, LookupError):
        return None
