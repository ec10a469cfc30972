"""Markdown documents (.md): the text is already what DocumentParse returns.

Line endings are normalised to ``\\n`` and nothing else is touched: headings, tables
and code blocks reach the outputs (and chunking) as the author wrote them; the html
output escapes and sanitizes the text like any other document's.
"""

from __future__ import annotations

from pathlib import Path

from ..domain import Extraction, ParseJob


def read(job: ParseJob, model_dir: Path) -> Extraction:
    with open(job.path, encoding="utf-8-sig", newline="") as handle:
        text = handle.read()
    markdown = text.replace("\r\n", "\n").replace("\r", "\n")
    return Extraction(markdown, "zopilot:markdown", {"extractor": "markdown"})
