"""Plain text (.txt): docstrange's TXTProcessor, which loses nothing here."""

from __future__ import annotations

from pathlib import Path

from ..domain import Extraction, ParseJob
from . import docstrange


def read(job: ParseJob, model_dir: Path) -> Extraction:
    """The registry's reader for .txt."""
    return docstrange.convert(job)
