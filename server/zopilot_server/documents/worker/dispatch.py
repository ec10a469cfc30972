"""The worker's dispatch: a job's type to its reader (the registry, formats.py), then the
requested outputs, structured fields and page marks; and the warm-up that parses a tiny
sample of every type once. Runs inside a parser worker, never in the server.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import time
from pathlib import Path

from .. import chunking, fields, formats, outputs
from ..domain import LABEL_MATCH_WARNING, Extraction, OutputFormat, ParseJob, ParseOutcome
from ..readers import docstrange


@functools.lru_cache(maxsize=1)
def parser_version() -> str:
    return importlib.metadata.version("docstrange")


def warm_up(scratch_dir: str) -> None:
    """Parse a tiny sample of every type once, so a worker's first real document is as
    fast as its hundredth (the processors import and initialise a lot lazily)."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=scratch_dir) as folder:
        for doc_type, path in _write_samples(Path(folder)).items():
            job = ParseJob(path=str(path), doc_type=doc_type, formats=(OutputFormat.MARKDOWN,))
            parse(job, model_dir=folder)


def _write_samples(folder: Path) -> dict[str, Path]:
    import docx
    import openpyxl
    import pptx
    import pymupdf

    paths = {
        t: folder / f"sample.{t}" for t in ("docx", "xlsx", "pptx", "pdf", "csv", "txt", "html")
    }
    paths["csv"].write_text("a,b\n1,2\n")
    paths["txt"].write_text("warm up\n")
    paths["html"].write_text("<h1>warm up</h1>")
    docx.Document().save(str(paths["docx"]))
    workbook = openpyxl.Workbook()
    workbook.active.append(["a", "b"])
    workbook.active.append([1, 2])
    workbook.save(str(paths["xlsx"]))
    pptx.Presentation().save(str(paths["pptx"]))
    with pymupdf.open() as pdf:
        pdf.new_page().insert_text((72, 72), "warm up")
        pdf.save(str(paths["pdf"]))
    return paths


def parse(job: ParseJob, model_dir: str) -> ParseOutcome:
    """Parse the file named by ``job`` into every requested output format."""
    started = time.perf_counter()
    extraction = _extract(job, Path(model_dir))
    warnings = extraction.warnings + docstrange.notes(extraction.markdown)
    if not extraction.markdown.strip():
        warnings.append("no text found in the document")
    structured = OutputFormat.JSON in job.formats and (
        bool(job.json_fields) or job.json_schema is not None
    )
    rendered = outputs.render(
        extraction.markdown,
        tuple(f for f in job.formats if not (structured and f is OutputFormat.JSON)),
        title=job.display_name,
        metadata=extraction.metadata,
        warnings=warnings,
    )
    if structured:
        data = fields.structured(extraction.markdown, job.json_fields, job.json_schema)
        rendered[OutputFormat.JSON] = json.dumps(data, ensure_ascii=False)
        warnings.append(LABEL_MATCH_WARNING)
    return ParseOutcome(
        outputs=rendered,
        method=extraction.method,
        page_count=extraction.page_count,
        sheet_count=extraction.sheet_count,
        slide_count=extraction.slide_count,
        processing_ms=(time.perf_counter() - started) * 1000,
        parser_version=parser_version(),
        warnings=warnings,
        page_marks=chunking.page_marks(
            job.doc_type, extraction.markdown, extraction.metadata.get("sheet_names", ())
        ),
    )


def _extract(job: ParseJob, model_dir: Path) -> Extraction:
    """The registry's reader for the job's type (formats.py)."""
    return formats.reader(job.doc_type)(job, model_dir)  # type: ignore[no-any-return]
