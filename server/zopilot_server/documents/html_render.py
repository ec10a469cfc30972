"""Safe HTML from our markdown: every piece of text escaped, then an allowlist sanitizer.

docstrange's MarkdownToHTMLConverter copies text through unescaped (a ``<script>`` or an
``onerror=`` in a txt, docx or pdf came out live), un-escapes ``&lt;script&gt;`` from HTML
inputs into a live tag, keeps remote ``<img src>`` and nests tables in ``<p>``. Here the
markdown is read block by block (headings, tables, lists, code fences, quotes,
paragraphs), all text is escaped before any tag is written, inline markup is limited to
bold, italic, code and links with http(s)/mailto targets, images become their alt text,
and nh3 (ammonia) removes anything outside a small allowlist as a second line of defence.
"""

from __future__ import annotations

import html
import re

import nh3

TAGS = frozenset(
    {
        "h1", "h2", "h3", "h4", "h5", "h6", "p", "br", "hr", "strong", "em", "code", "pre",
        "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "a",
    }
)  # fmt: skip
ATTRIBUTES = {"a": {"href"}, "ol": {"start"}}
URL_SCHEMES = frozenset({"http", "https", "mailto"})
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_TABLE_RULE = re.compile(r"^\s*\|[\s\-:|]+\|\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_LIST = re.compile(r"^([ \t]*)(?:([-*+])|(\d{1,9})[.)])\s+(.*)$")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\(((?:https?://|mailto:)[^)\s]+)\)")
_CODE = re.compile(r"`([^`]+)`")
_STRONG = re.compile(r"(?<![\w*])\*\*(?=\S)(.+?)(?<=\S)\*\*(?![\w*])")
_EM = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")
_UNDER_STRONG = re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)")
_UNDER_EM = re.compile(r"(?<!\w)_(?=[^\s_])(.+?)(?<=[^\s_])_(?!\w)")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def sanitize(fragment: str) -> str:
    """nh3 with our allowlist: no scripts, no event handlers, no javascript: or images."""
    return nh3.clean(
        fragment,
        tags=set(TAGS),
        attributes={k: set(v) for k, v in ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


def inline(text: str) -> str:
    """Escaped text with our few inline marks turned into tags."""
    text = _IMAGE.sub(lambda m: m.group(1), text)
    links: list[str] = []

    def keep_link(match: re.Match[str]) -> str:
        links.append(
            f'<a href="{html.escape(match.group(2), quote=True)}">{html.escape(match.group(1))}</a>'
        )
        return f"\x00{len(links) - 1}\x00"

    text = html.escape(_LINK.sub(keep_link, text), quote=False)
    text = text.replace("&lt;br&gt;", "<br>")
    text = _CODE.sub(r"<code>\1</code>", text)
    text = _STRONG.sub(r"<strong>\1</strong>", text)
    text = _UNDER_STRONG.sub(r"<strong>\1</strong>", text)
    text = _EM.sub(r"<em>\1</em>", text)
    text = _UNDER_EM.sub(r"<em>\1</em>", text)

    def restore(match: re.Match[str]) -> str:
        number = int(match.group(1))
        return links[number] if number < len(links) else ""

    return re.sub("\x00(\\d+)\x00", restore, text)


def cells(line: str) -> list[str]:
    """A markdown table row's cells, ``\\|`` kept inside its cell."""
    inner = line.strip()[1:-1]
    return [c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(inner)]


def body(markdown: str) -> str:
    """The HTML body for ``markdown``, sanitized."""
    out: list[str] = []
    lines = markdown.splitlines()
    index = 0
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{'<br>'.join(inline(p) for p in paragraph)}</p>")
            paragraph.clear()

    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            code = []
            index += 1
            while index < len(lines) and not lines[index].strip().startswith("```"):
                code.append(lines[index])
                index += 1
            out.append(f"<pre><code>{html.escape(chr(10).join(code))}</code></pre>")
        elif _TABLE_ROW.match(line):
            flush()
            rows = []
            while index < len(lines) and _TABLE_ROW.match(lines[index]):
                if not (_TABLE_RULE.match(lines[index]) and "-" in lines[index]):
                    rows.append(cells(lines[index]))
                index += 1
            out.append(_table(rows))
            continue
        elif match := _HEADING.match(stripped):
            flush()
            level = len(match.group(1))
            out.append(f"<h{level}>{inline(match.group(2))}</h{level}>")
        elif _LIST.match(line):
            flush()
            items = []
            while index < len(lines) and (item := _LIST.match(lines[index])):
                items.append(item)
                index += 1
            out.append(_list(items))
            continue
        elif stripped.startswith(">"):
            flush()
            out.append(f"<blockquote>{inline(stripped.lstrip('>').strip())}</blockquote>")
        elif stripped in {"---", "***", "___"}:
            flush()
            out.append("<hr>")
        elif not stripped:
            flush()
        else:  # "\#" starts a text line that only looks like a heading (readers/pdf/text.py)
            paragraph.append(stripped[1:] if stripped.startswith("\\#") else stripped)
        index += 1
    flush()
    return sanitize("\n".join(out))


def _table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{inline(c)}</th>" for c in rows[0])
    body_rows = "".join(
        "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body_rows}</tbody></table>"


def _list(items: list[re.Match[str]]) -> str:
    """Consecutive list lines as nested ``<ul>`` / ``<ol>``: a deeper indent opens a
    list inside the open item, a shallower one closes lists back to its level, and a
    change between bullets and numbers at one level starts a new list. An ordered list
    that does not start at 1 (a docx list with a start value) gets ``start``."""
    out: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, tag) of the open lists
    for item in items:
        indent = len(item.group(1).expandtabs(4))
        tag = "ul" if item.group(2) else "ol"
        while stack and indent < stack[-1][0]:
            out.append(f"</li></{stack.pop()[1]}>")
        if stack and indent == stack[-1][0] and tag == stack[-1][1]:
            out.append("</li>")
        else:
            if stack and indent == stack[-1][0]:
                out.append(f"</li></{stack.pop()[1]}>")
            number = int(item.group(3) or 1)
            out.append(f'<ol start="{number}">' if tag == "ol" and number != 1 else f"<{tag}>")
            stack.append((indent, tag))
        out.append(f"<li>{inline(item.group(4))}")
    while stack:
        out.append(f"</li></{stack.pop()[1]}>")
    return "".join(out)
