"""The output renderers on markdown, in process: text keeps all but markdown emphasis, csv
unescapes cells, json keeps the text before the first heading, html escapes and
sanitizes yet keeps structure and safe links.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from documents_calls import assert_safe_html, csv_rows
from zopilot_server.documents import html_render, outputs


@pytest.mark.parametrize(
    ("markdown", "text"),
    [
        ("**bold** and *it* and __b__ and _u_", "bold and it and b and u"),
        ("first_name, last_name and snake_case_word", "first_name, last_name and snake_case_word"),
        ("2*3*4 = 24 and a * b * c", "2*3*4 = 24 and a * b * c"),
        ("| _x_ | **y** |\n| --- | --- |\n| a_b | 2*3 |", "_x_\t**y**\na_b\t2*3"),
        ("| a \\| b | c<br>d |", "a | b\tc d"),
    ],
)
def test_text_strips_only_markdown_emphasis(markdown: str, text: str) -> None:
    assert outputs.to_text(markdown) == text


def test_csv_cells_unescape_pipes_and_line_breaks() -> None:
    markdown = "| h1 | h2 |\n| --- | --- |\n| a \\| b | line 1<br>line 2 |"
    assert csv_rows(outputs.to_csv(markdown, [])) == [["h1", "h2"], ["a | b", "line 1\nline 2"]]


def test_json_keeps_text_before_the_first_heading() -> None:
    markdown = "Lead paragraph.\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\n# Later\n\nBody."
    data: dict[str, Any] = json.loads(outputs.to_json(markdown, {}, []))
    sections = data["document"]["sections"]
    assert [s["title"] for s in sections] == ["Content", "Later"]
    assert sections[0]["content"]["paragraphs"] == ["Lead paragraph."]
    assert sections[0]["content"]["tables"][0]["rows"] == [["1", "2"]]
    assert data["document"]["metadata"]["total_sections"] == 2


@pytest.mark.parametrize(
    "markdown",
    [
        "[click](javascript:alert(1)) and ![x](https://evil.example/p.png)",
        '<a href="javascript:x" onclick="y">a</a><img src="http://e.example/i.png" onerror=z>',
        "# <script>alert(1)</script>\n\n| <b onmouseover=x>c</b> |\n| --- |\n| <svg onload=y> |",
        "```\n<script>alert(1)</script>\n```",
    ],
)
def test_html_renderer_escapes_and_sanitizes(markdown: str) -> None:
    page = outputs.to_html(markdown, "t")
    assert_safe_html(page)
    assert "<script" not in page and "<svg" not in page


def test_html_renderer_keeps_structure_and_safe_links() -> None:
    markdown = (
        "# T\n\n- one\n- two\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\n[docs](https://x.example/d)"
    )
    body = html_render.body(markdown)
    assert "<h1>T</h1>" in body and "<ul><li>one</li><li>two</li></ul>" in body
    assert "<table><thead><tr><th>a</th><th>b</th></tr></thead><tbody>" in body
    assert "<p><table" not in body and "<p><thead" not in body
    assert 'href="https://x.example/d"' in body and "noopener" in body
    tags = assert_safe_html(
        html_render.sanitize('<p onclick="x">k</p><a href="javascript:y">z</a>')
    )
    assert tags == [("p", {}), ("a", {"rel": "noopener noreferrer nofollow"})]
