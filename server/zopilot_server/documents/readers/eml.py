"""E-mail messages (.eml): headers, the body, and a list of the attachments.

Python's email package reads the message (MIME, transfer encodings, each part's
declared charset). The markdown is the subject as a heading, the From / To / Cc / Date
lines, then the body: the text/plain alternative when there is one, otherwise the HTML
one through the HTML reader (html_page.py). Attachments are not parsed: each is
named in a warning with its type and size, and in metadata ``attachments``, unless the
request sets ``parse_attachments``: then each goes through detection and its type's
reader (same limits, one level deep) into a ``## Attachment: name`` section.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import os
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from ..domain import DocumentRejected, Extraction, ParseJob
from . import html_page
from .common import words

HEADERS = ("From", "To", "Cc", "Date")
MAX_LISTED_ATTACHMENTS = 50


def read(job: ParseJob, model_dir: Path) -> Extraction:
    with open(job.path, "rb") as handle:
        data = handle.read()
    try:
        message = email.message_from_bytes(data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        lines, warnings = _header_lines(message), []
        body, method = _body(job, model_dir, message, warnings)
        attachments = _attachments(message)
    except RecursionError as exc:
        raise DocumentRejected("content", "the e-mail's MIME parts nest too deep") from exc
    sections: list[str] = []
    if job.parse_attachments:
        sections = _parsed_attachments(job, model_dir, message, warnings)
    else:
        for found in attachments[:MAX_LISTED_ATTACHMENTS]:
            warnings.append(
                f"eml: attachment {found['filename'][:100]!r} ({found['content_type']}, "
                f"{found['size_bytes']} bytes) is listed, not parsed"
            )
        if len(attachments) > MAX_LISTED_ATTACHMENTS:
            warnings.append(f"eml: {len(attachments) - MAX_LISTED_ATTACHMENTS} more attachments")
    parts = ("\n".join(lines), body, *sections)
    markdown = "\n\n".join(part for part in parts if part.strip())
    metadata: dict[str, Any] = {"extractor": "email", "attachments": attachments}
    return Extraction(markdown, method, metadata, warnings=warnings)


def _header_lines(message: EmailMessage) -> list[str]:
    subject = words(_header(message, "Subject"))
    lines = [f"# {subject}"] if subject else []
    for name in HEADERS:
        value = words(_header(message, name))
        if value:
            lines.append(f"{name}: {value}")
    return lines


def _header(message: EmailMessage, name: str) -> str:
    """A header's decoded text; a malformed one as its raw text rather than an error."""
    try:
        return str(message.get(name, "") or "")
    except Exception:  # noqa: BLE001 - the email package raises many types on bad headers
        raw = message.get_all(name) or []
        return " ".join(str(v) for v in raw)


def _body(
    job: ParseJob, model_dir: Path, message: EmailMessage, warnings: list[str]
) -> tuple[str, str]:
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        warnings.append("eml: the message has no text body")
        return "", "zopilot:email"
    text = _content(part, warnings)
    if part.get_content_subtype() != "html":
        return text.replace("\r\n", "\n").strip(), "zopilot:email"
    html_path = os.path.join(os.path.dirname(job.path), "eml-body.html")
    with open(html_path, "w", encoding="utf-8") as handle:
        handle.write(text)
    try:
        extraction = html_page.read(
            dataclasses.replace(job, path=html_path, doc_type="html"), model_dir
        )
    finally:
        os.unlink(html_path)
    return extraction.markdown, "zopilot:email+" + extraction.method


def _content(part: EmailMessage, warnings: list[str]) -> str:
    """A text part decoded with its declared charset; an unknown charset as UTF-8 with
    replacement characters, said in a warning."""
    try:
        return str(part.get_content())
    except (LookupError, UnicodeError, ValueError):
        payload = part.get_payload(decode=True) or b""
        charset = part.get_content_charset() or "?"
        warnings.append(f"eml: unknown charset {charset[:40]!r}; the body was read as UTF-8")
        return bytes(payload).decode("utf-8", "replace")


def _parsed_attachments(
    job: ParseJob, model_dir: Path, message: EmailMessage, warnings: list[str]
) -> list[str]:
    """Each attachment through detection and its type's reader, as a markdown section;
    one that cannot be parsed is named in a warning with the reason."""
    from .. import formats
    from ..server import detection

    sections = []
    for number, part in enumerate(message.iter_attachments()):
        if number >= MAX_LISTED_ATTACHMENTS:
            warnings.append("eml: attachments past the first 50 were not parsed")
            break
        name = (part.get_filename() or f"attachment-{number + 1}")[:200]
        payload = part.get_payload(decode=True)
        content = payload if isinstance(payload, bytes) else b""
        try:
            if part.get_content_maintype() == "message":  # message/rfc822: an e-mail
                raise DocumentRejected("content", "an attached e-mail is listed, not parsed")
            detected = detection.detect(name, part.get_content_type(), content)
            if detected.doc_type.name == "eml":
                raise DocumentRejected("content", "an attached e-mail is listed, not parsed")
            path = os.path.join(
                os.path.dirname(job.path), f"attachment-{number}{detected.doc_type.extension}"
            )
            with open(path, "wb") as handle:
                handle.write(detected.content)
            inner = dataclasses.replace(
                job, path=path, doc_type=detected.doc_type.name, display_name=name,
                parse_attachments=False,
            )  # fmt: skip
            try:
                extraction = formats.reader(detected.doc_type.name)(inner, model_dir)
            finally:
                os.unlink(path)
        except DocumentRejected as exc:
            warnings.append(f"eml: attachment {name[:100]!r} was not parsed: {exc.message}")
            continue
        sections.append(f"## Attachment: {words(name)}\n\n{extraction.markdown}")
        warnings += [f"eml: attachment {name[:100]!r}: {w}" for w in extraction.warnings]
    return sections


def _attachments(message: EmailMessage) -> list[dict[str, Any]]:
    found = []
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True)
        size = len(payload) if isinstance(payload, bytes) else _size(part)
        found.append(
            {
                "filename": part.get_filename() or "(unnamed)",
                "content_type": part.get_content_type(),
                "size_bytes": size,
            }
        )
    return found


def _size(part: EmailMessage) -> int:
    """An attached message's size as sent (0 when it cannot even be written back)."""
    try:
        return len(part.as_bytes())
    except Exception:  # noqa: BLE001 - the email package raises many types on bad parts
        return 0
