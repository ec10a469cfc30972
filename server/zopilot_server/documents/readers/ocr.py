"""The bundled OCR engine: images and PDF pages without a text layer, fully offline.

docstrange's own OCR (docling layout + TableFormer + EasyOCR) needs models downloaded at
first use, which an offline server cannot do. When they are not installed
(ocr_models.py), pages are read by Tesseract instead: the distribution's
``tesseract-ocr`` package carries the engine and its English and orientation models
(Apache-2.0, about 20 MB), so nothing is ever downloaded at run time. Measured against
RapidOCR (PP-OCRv4 ONNX models from PyPI) on the same rendered English page: word recall
1.00 against 0.63 (PP-OCR's recogniser drops spaces and lost whole lines), 2.4 s against
17 s a page on two busy cores, 170 MiB against 750 MiB (README, "OCR").

The engine runs as a child of the parser worker (no network, the worker's private temp
dir), one page at a time through stdin/stdout, with OpenMP held to one thread: Tesseract's
default thread pool made a page ten times slower on two shared cores. Small images are
enlarged before they are read (``upscale_factor``: Tesseract wants letters 20-30 px
tall), and the warning says by how much. Two limits bound it:

- ``ocr_max_pages``: pages (PDF pages without a text layer, image frames) read per
  document; more is refused before any is read.
- ``ocr_max_pixels``: pixels per image, checked from the header before anything is
  decoded, so a decompression bomb (a small file that claims 100k x 100k pixels) is
  refused without allocating its pixels. PDF pages are rendered at ``RENDER_DPI`` or at
  the highest resolution that stays within the limit.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..domain import DocumentRejected, OcrModelsMissing, ParseJob

ENGINE = "tesseract"
# metadata["page_methods"] entry of a page this engine read.
METHOD = f"{ENGINE}-ocr"
RENDER_DPI = 200
# A page whose mean word confidence is below this is tried again after orientation
# detection (a rotated scan reads as low-confidence noise).
RETRY_BELOW_CONFIDENCE = 0.7
# Small images are enlarged before recognition (upscale_factor).
UPSCALE_TARGET_SIDE = 1000
MAX_UPSCALE = 4.0
MIN_UPSCALE = 1.5
# One page may take this long (the worker's own timeout usually ends things first; this
# keeps an orphaned engine from outliving a killed worker by long).
PAGE_TIMEOUT_S = 120.0
# Frames beyond the first of other types are animation, not pages.
MULTI_PAGE_IMAGES = frozenset({"tiff"})
INSTALL_HINT = (
    "the bundled OCR engine is not installed: `apt-get install tesseract-ocr "
    "tesseract-ocr-eng` (make install does this), or install docstrange's models"
)
_ROTATE = re.compile(r"^Rotate:\s*(\d+)", re.MULTILINE)


@dataclass
class OcrPage:
    """One page read by the engine: its text and how sure the engine was (0-1)."""

    text: str
    confidence: float
    words: int
    rotated: int = 0  # degrees the page was turned (clockwise) before it was read
    scale: float = 1.0  # how much a small image was enlarged before it was read


def binary() -> str:
    """The engine's executable, or FAILED_PRECONDITION saying how to install it."""
    path = shutil.which("tesseract")
    if path is None:
        raise OcrModelsMissing(INSTALL_HINT)
    return path


def _run(argv: list[str], image: bytes) -> bytes:
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        done = subprocess.run(
            argv, input=image, capture_output=True, env=env, timeout=PAGE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DocumentRejected(
            "content", f"OCR of one page took longer than {PAGE_TIMEOUT_S:g} s"
        ) from exc
    if done.returncode != 0:
        # Leptonica refuses what it cannot decode; the image is the client's.
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DocumentRejected(
            "content", f"the OCR engine could not read a page: {message[-1] if message else ''}"
        )
    # Tesseract and --version write to stdout; old builds print the version on stderr.
    return done.stdout or done.stderr


def read(image: Any) -> OcrPage:
    """OCR one greyscale PIL image; retry upright when it reads as a rotated page."""
    page = _recognise(image)
    if page.confidence >= RETRY_BELOW_CONFIDENCE or not page.words:
        return page  # read well, or blank (a sideways page still reads as some noise)
    turn = _orientation(image)
    if not turn:
        return page
    upright = _recognise(image.rotate(-turn, expand=True))
    upright.rotated = turn
    if upright.words * upright.confidence > page.words * page.confidence:
        return upright
    return page


def upscale_factor(width: int, height: int, max_pixels: int) -> float:
    """How much to enlarge a small image before recognition (1.0: not at all).

    Tesseract reads letters 20-30 px tall; a 150x214 poster or a 60 dpi scan has letters
    of 5-10 px, which it reads as noise (measured on a 10 pt page rendered at 60 dpi:
    word recall 0.19 as it is, 0.92 at 2x, 0.95 at 4x). Without knowing the letters'
    size, the image's shorter side is brought up to ``UPSCALE_TARGET_SIDE`` pixels, in
    half steps, at most ``MAX_UPSCALE`` times and never past --doc-ocr-max-pixels.
    """
    if width <= 0 or height <= 0:
        return 1.0
    factor = min(
        MAX_UPSCALE,
        UPSCALE_TARGET_SIDE / min(width, height),
        (max_pixels / (width * height)) ** 0.5,
    )
    factor = int(factor * 2) / 2
    return factor if factor >= MIN_UPSCALE else 1.0


def read_image(image: Any, max_pixels: int) -> OcrPage:
    """OCR an image file's page, enlarged first when it is small (``upscale_factor``).
    A small image that still reads with low confidence is read as it is too (its
    letters may have been large already), and the better reading is kept."""
    from PIL import Image

    factor = upscale_factor(image.width, image.height, max_pixels)
    if factor == 1.0:
        return read(image)
    size = (round(image.width * factor), round(image.height * factor))
    enlarged = read(image.resize(size, Image.Resampling.LANCZOS))
    enlarged.scale = factor
    if enlarged.confidence >= RETRY_BELOW_CONFIDENCE:
        return enlarged
    native = read(image)
    if native.words * native.confidence > enlarged.words * enlarged.confidence:
        return native
    return enlarged


def _pnm(image: Any) -> bytes:
    """Uncompressed PGM: the cheapest format for Pillow to write and Leptonica to read."""
    buffer = io.BytesIO()
    image.save(buffer, format="PPM")
    return buffer.getvalue()


def _recognise(image: Any) -> OcrPage:
    tsv = _run([binary(), "stdin", "stdout", "-l", "eng", "--psm", "3", "tsv"], _pnm(image))
    return parse_tsv(tsv.decode("utf-8", "replace"))


def parse_tsv(tsv: str) -> OcrPage:
    """Tesseract's TSV (one row per word, with its block/paragraph/line) as text: words
    joined by spaces, lines by newlines, paragraphs and blocks by a blank line."""
    paragraphs: list[list[list[str]]] = []
    confidences: list[float] = []
    last_par: tuple[str, str] | None = None
    last_line: str | None = None
    for row in tsv.splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) < 12 or cols[0] != "5" or not cols[11].strip():
            continue
        par, line = (cols[2], cols[3]), cols[4]
        if par != last_par:
            paragraphs.append([])
            last_par, last_line = par, None
        if line != last_line:
            paragraphs[-1].append([])
            last_line = line
        paragraphs[-1][-1].append(cols[11].strip())
        confidences.append(max(float(cols[10]), 0.0) / 100)
    text = "\n\n".join("\n".join(" ".join(words) for words in lines) for lines in paragraphs)
    mean = sum(confidences) / len(confidences) if confidences else 0.0
    return OcrPage(text=text, confidence=mean, words=len(confidences))


def _orientation(image: Any) -> int:
    """Degrees to turn the page clockwise to make it upright (0 when unsure)."""
    try:
        out = _run([binary(), "stdin", "stdout", "--psm", "0"], _pnm(image))
    except DocumentRejected:  # too little text to tell
        return 0
    match = _ROTATE.search(out.decode("utf-8", "replace"))
    return int(match.group(1)) % 360 if match else 0


def check_pages(count: int, max_pages: int) -> None:
    if count > max_pages:
        raise DocumentRejected(
            "content",
            f"the document needs OCR on {count} pages; the limit is {max_pages} "
            "(--doc-ocr-max-pages)",
        )


def _check_pixels(width: int, height: int, max_pixels: int, where: str) -> None:
    if width * height > max_pixels:
        raise DocumentRejected(
            "content",
            f"{where} is {width}x{height} = {width * height} pixels; the limit is "
            f"{max_pixels} pixels per image (--doc-ocr-max-pixels)",
        )


def image_pages(job: ParseJob) -> tuple[list[Any], list[str]]:
    """The pages of an image file as greyscale PIL images, each checked against the
    limits before it is decoded; plus warnings (frames that were not read)."""
    from PIL import Image, ImageSequence

    warnings: list[str] = []
    try:
        # Opening reads the header only; our check of its size, with a message naming our
        # flag, comes before Pillow's own guard, which then backs it up for every frame.
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(job.path) as image:
            _check_pixels(image.width, image.height, job.ocr_max_pixels, "the image")
            Image.MAX_IMAGE_PIXELS = max(job.ocr_max_pixels, 1)
            frames = getattr(image, "n_frames", 1)
            if frames > 1 and job.doc_type not in MULTI_PAGE_IMAGES:
                warnings.append(f"the {job.doc_type} has {frames} frames; only the first was read")
                frames = 1
            check_pages(frames, job.ocr_max_pages)
            pages = []
            for number, frame in enumerate(_frames(image, frames, ImageSequence), start=1):
                where = "the image" if frames == 1 else f"page {number} of the image"
                _check_pixels(frame.width, frame.height, job.ocr_max_pixels, where)
                pages.append(_greyscale(frame))
            return pages, warnings
    except DocumentRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise DocumentRejected(
            "content", f"the image is too large: {exc} (--doc-ocr-max-pixels)"
        ) from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
        raise DocumentRejected(
            "content", f"could not decode the {job.doc_type}: {type(exc).__name__}: {exc}"
        ) from exc


def _frames(image: Any, count: int, sequence: Any) -> Iterator[Any]:
    for index, frame in enumerate(sequence.Iterator(image)):
        if index >= count:
            return
        yield frame


def _greyscale(frame: Any) -> Any:
    """Greyscale with the contrast stretched: faint scans read like clean ones."""
    from PIL import ImageOps

    if frame.mode in ("RGBA", "LA", "P"):
        frame = frame.convert("RGBA")
        white = frame.copy()
        white.paste((255, 255, 255, 255), (0, 0, *frame.size))
        white.alpha_composite(frame)
        frame = white
    # Clip only the lightest 1% (paper texture, JPEG noise): clipping the darkest would
    # blank a sparse page, whose text is less than 1% of its pixels.
    return ImageOps.autocontrast(frame.convert("L"), cutoff=(0, 1))


def render_pdf_page(page: Any, max_pixels: int) -> tuple[Any, int]:
    """A PDF page as a greyscale PIL image at RENDER_DPI, or at the highest resolution
    that stays within ``max_pixels``; returns the image and the dpi used."""
    import pymupdf
    from PIL import Image

    inches = (page.rect.width / 72) * (page.rect.height / 72)
    dpi = RENDER_DPI
    if inches > 0 and inches * dpi * dpi > max_pixels:
        dpi = max(int((max_pixels / inches) ** 0.5), 1)
    pixmap = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY, alpha=False)
    image = Image.frombytes("L", (pixmap.width, pixmap.height), pixmap.samples)
    return _greyscale(image), dpi


def describe(number: int, page: OcrPage, dpi: int | None = None) -> str:
    """The per-page warning that says a page was OCRed, and how well."""
    how = [ENGINE] + ([f"{dpi} dpi"] if dpi is not None else [])
    if page.scale != 1.0:
        how.append(f"upscaled {page.scale:g}x")
    if page.rotated:
        how.append(f"turned {page.rotated} degrees")
    return (
        f"page {number}: no text layer, read by OCR ({', '.join(how)}; "
        f"mean word confidence {page.confidence:.2f})"
    )
