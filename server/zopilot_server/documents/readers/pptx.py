"""PPTX: our own markdown on python-pptx.

docstrange 1.1.6's PPTXProcessor drops tables, group shapes and charts; this walks every
slide as ``## Slide N`` with its text frames, tables, group members, chart titles and
speaker notes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..domain import Extraction, ParseJob
from . import docstrange
from .markdown_tables import Office, table


def read(job: ParseJob, model_dir: Path) -> Extraction:
    """The registry's reader for .pptx: our walker, docstrange's processor for a file not
    named for its type."""
    return docstrange.walk_or_convert(job, "python-pptx", lambda j: pptx_markdown(j.path))


def pptx_markdown(path: str) -> Office:
    """Every slide: text frames, tables, group members, chart titles, speaker notes."""
    import pptx

    deck = pptx.Presentation(path)
    parts = []
    for number, slide in enumerate(deck.slides, start=1):
        parts.append(f"## Slide {number}")
        parts.extend(_pptx_shapes(slide.shapes))
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None and notes.text.strip():
                parts.append(f"Notes: {' '.join(notes.text.split())}")
    metadata = {"slide_count": len(deck.slides), "file_type": "pptx", "extractor": "python-pptx"}
    office = Office("\n\n".join(parts), metadata, slide_count=len(deck.slides))
    pictures = sum(_pptx_pictures(slide.shapes) for slide in deck.slides)
    if pictures:
        office.warnings.append(f"pptx: {pictures} picture(s) not extracted (not OCRed)")
    return office


def _pptx_pictures(shapes: Iterable[Any]) -> int:
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    count = 0
    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            count += _pptx_pictures(shape.shapes)
        elif shape.shape_type == MSO_SHAPE_TYPE.PICTURE:
            count += 1
    return count


def _pptx_shapes(shapes: Iterable[Any]) -> Iterator[str]:
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _pptx_shapes(shape.shapes)
            continue
        if getattr(shape, "has_table", False) and shape.has_table:
            rows = [[c.text for c in row.cells] for row in shape.table.rows]
            if rows:
                yield table(rows)
            continue
        if getattr(shape, "has_chart", False) and shape.has_chart:
            chart = shape.chart
            if chart.has_title and chart.chart_title.has_text_frame:
                title = " ".join(chart.chart_title.text_frame.text.split())
                if title:
                    yield f"Chart: {title}"
            continue
        if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            lines = [" ".join(p.text.split()) for p in shape.text_frame.paragraphs]
            text = "\n".join(line for line in lines if line)
            if text:
                yield text
