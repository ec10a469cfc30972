"""Images (png, jpg, gif, bmp, tiff, webp): docstrange's OCR when its models are
installed, else the bundled engine (ocr.py), every page of a multi-page TIFF."""

from __future__ import annotations

from pathlib import Path

from .. import ocr_models
from ..domain import Extraction, ParseJob
from . import docstrange, ocr


def read(job: ParseJob, model_dir: Path) -> Extraction:
    """The registry's reader for every image type."""
    if ocr_models.missing(model_dir):
        return _bundled_image(job)
    return docstrange.read_ocr(job, model_dir, "ImageProcessor")


def _bundled_image(job: ParseJob) -> Extraction:
    """An image (every page of a multi-page TIFF) through the bundled engine."""
    images, warnings = ocr.image_pages(job)
    pages = [ocr.read_image(image, job.ocr_max_pixels) for image in images]
    markdown = ocr_markdown(pages) if len(pages) > 1 else pages[0].text
    methods = [ocr.METHOD] * len(pages)
    extraction = Extraction(
        markdown, ocr.METHOD, {"pages": len(pages), "page_methods": methods}, len(pages)
    )
    extraction.warnings += warnings + [ocr.describe(n, p) for n, p in enumerate(pages, 1)]
    return extraction


def ocr_markdown(pages: list[ocr.OcrPage]) -> str:
    """OCRed pages as ``## Page N`` sections (empty pages left out)."""
    return "\n\n".join(
        f"## Page {number}\n\n{page.text}" for number, page in enumerate(pages, 1) if page.text
    )
