"""OCR without docstrange's models: the bundled engine (documents/ocr.py) through the RPC.

Ground truth is real text: the tests build text-layer PDFs with PyMuPDF, render their
pages to images at 150-300 dpi, send those as png / jpg / tiff or as an image-only PDF,
and compare the words the server read with the words of the text layer. Pages are small
(A6) so the whole file runs in seconds on two cores.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pymupdf
import pytest
import verify_env
from PIL import Image
from support import InProcessServer
from zopilot_client.pb import documents_pb2 as pb
from zopilot_client.pb import documents_pb2_grpc as pb_grpc
from zopilot_server.config import ServerConfig

MAX_PAGES = 3
MAX_PIXELS = 8_000_000
RECALL = 0.9
A6 = pymupdf.Rect(0, 0, 298, 420)
PARAGRAPHS = (
    "The committee met on Tuesday to review the quarterly budget and the hiring plan. "
    "Members agreed that the office in Lisbon should open in March, provided that the "
    "lease is signed before the end of the month.",
    "Several questions remained about travel costs, software licences and the schedule "
    "for training new staff. Each department will send a short report by Friday.",
    "Invoice 4711 lists twelve chairs, three desks and one large whiteboard, delivered to "
    "the second floor of the north building on the fifth of June.",
)


@pytest.fixture(scope="module")
def ocr_server(
    tiny_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessServer]:
    config = dataclasses.replace(
        tiny_config,
        doc_workers=2,
        doc_model_dir=str(tmp_path_factory.mktemp("no-ocr-models")),
        doc_ocr_max_pages=MAX_PAGES,
        doc_ocr_max_pixels=MAX_PIXELS,
    )
    server = InProcessServer(config)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(ocr_server: InProcessServer) -> Iterator[pb_grpc.DocumentsStub]:
    with grpc.insecure_channel(ocr_server.target) as channel:
        yield pb_grpc.DocumentsStub(channel)


def parse(stub: pb_grpc.DocumentsStub, content: bytes, filename: str) -> pb.DocumentParseResponse:
    formats = [pb.OUTPUT_FORMAT_MARKDOWN, pb.OUTPUT_FORMAT_JSON]
    request = pb.DocumentParseRequest(content=content, filename=filename, formats=formats)
    return stub.DocumentParse(request, timeout=60)


def words(text: str) -> collections.Counter[str]:
    return collections.Counter(re.findall(r"[a-z0-9]+", text.lower()))


def recall(truth: str, read: str) -> float:
    """The share of the text layer's words (with multiplicity) found in what was read."""
    expected, got = words(truth), words(read)
    return sum(min(n, got[w]) for w, n in expected.items()) / sum(expected.values())


def text_pdf(paragraphs: tuple[str, ...] = PARAGRAPHS) -> pymupdf.Document:
    """One A6 page per paragraph, with a real text layer."""
    document = pymupdf.open()
    for paragraph in paragraphs:
        page = document.new_page(width=A6.width, height=A6.height)
        page.insert_textbox(
            pymupdf.Rect(20, 20, A6.x1 - 20, A6.y1 - 20), paragraph, fontsize=10, fontname="helv"
        )
    return document


def render(page: pymupdf.Page, dpi: int) -> Image.Image:
    pixmap = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY)
    return Image.frombytes("L", (pixmap.width, pixmap.height), pixmap.samples)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def image_only_pdf(images: list[Image.Image]) -> bytes:
    """A 'scanned' PDF: each page is one picture, no text layer."""
    document = pymupdf.open()
    for image in images:
        page = document.new_page(width=A6.width, height=A6.height)
        page.insert_image(page.rect, stream=encoded(image, "PNG"))
    return document.tobytes()


def metadata(reply: pb.DocumentParseResponse) -> dict[str, object]:
    return json.loads(reply.json)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("fmt", "suffix", "dpi"), [("PNG", "png", 200), ("JPEG", "jpg", 150), ("TIFF", "tif", 300)]
)
def test_a_rendered_page_reads_like_its_text_layer(
    stub: pb_grpc.DocumentsStub, fmt: str, suffix: str, dpi: int
) -> None:
    page = text_pdf()[0]
    reply = parse(stub, encoded(render(page, dpi), fmt), f"scan.{suffix}")
    assert recall(page.get_text(), reply.markdown) >= RECALL, reply.markdown
    assert reply.metadata.method == "tesseract-ocr"
    assert reply.metadata.page_count == 1
    assert metadata(reply)["page_methods"] == ["tesseract-ocr"]
    assert any(w.startswith("page 1: no text layer, read by OCR") for w in reply.warnings)


def test_an_image_only_pdf_is_read_page_by_page(stub: pb_grpc.DocumentsStub) -> None:
    document = text_pdf(PARAGRAPHS[:2])
    reply = parse(stub, image_only_pdf([render(p, 200) for p in document]), "scan.pdf")
    assert reply.metadata.method == "tesseract-ocr"
    assert reply.metadata.page_count == 2
    assert metadata(reply)["page_methods"] == ["tesseract-ocr", "tesseract-ocr"]
    first, second = reply.markdown.split("## Page 2")
    assert recall(document[0].get_text(), first) >= RECALL
    assert recall(document[1].get_text(), second) >= RECALL
    assert [w.split(":")[0] for w in reply.warnings if "read by OCR" in w] == ["page 1", "page 2"]


def test_a_mixed_pdf_ocrs_only_the_pages_without_a_text_layer(
    stub: pb_grpc.DocumentsStub,
) -> None:
    source = text_pdf(PARAGRAPHS[:2])
    mixed = pymupdf.open()
    mixed.insert_pdf(source, from_page=0, to_page=0)
    mixed.insert_pdf(pymupdf.open("pdf", image_only_pdf([render(source[1], 200)])))
    reply = parse(stub, mixed.tobytes(), "mixed.pdf")
    assert reply.metadata.method == "pymupdf-text+tesseract-ocr"
    assert metadata(reply)["page_methods"] == ["pymupdf-text", "tesseract-ocr"]
    first, second = reply.markdown.split("## Page 2")
    assert source[0].get_text().split() == first.replace("## Page 1", "").split()
    assert recall(source[1].get_text(), second) >= RECALL
    assert next(w for w in reply.warnings if "read by OCR" in w).startswith("page 2:")


def test_a_rotated_page_is_turned_upright(stub: pb_grpc.DocumentsStub) -> None:
    page = text_pdf()[1]
    image = render(page, 200).rotate(90, expand=True)
    reply = parse(stub, encoded(image, "PNG"), "sideways.png")
    assert recall(page.get_text(), reply.markdown) >= RECALL, reply.markdown
    assert any("turned 270 degrees" in w or "turned 90 degrees" in w for w in reply.warnings)


def test_a_low_contrast_page_is_read(stub: pb_grpc.DocumentsStub) -> None:
    page = text_pdf()[2]
    faint = render(page, 200).point(lambda v: 170 + v * 50 // 255)  # grey 170 on 220
    reply = parse(stub, encoded(faint, "JPEG", quality=85), "faint.jpg")
    assert recall(page.get_text(), reply.markdown) >= RECALL, reply.markdown


def test_a_table_keeps_its_cells(stub: pb_grpc.DocumentsStub) -> None:
    document = pymupdf.open()
    page = document.new_page(width=A6.width, height=A6.height)
    rows = [("Item", "Qty", "Price"), ("Chairs", "12", "480"), ("Desks", "3", "900")]
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            page.insert_text((30 + c * 85, 60 + r * 24), cell, fontsize=11)
        page.draw_line((25, 66 + r * 24), (270, 66 + r * 24))
    reply = parse(stub, encoded(render(page, 200), "PNG"), "table.png")
    lines = [line.split() for line in reply.markdown.splitlines() if line.strip()]
    assert [list(row) for row in rows] == lines, reply.markdown


def test_a_multi_page_tiff_is_read_in_order(stub: pb_grpc.DocumentsStub) -> None:
    document = text_pdf()
    frames = [render(page, 150) for page in document]
    content = encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    reply = parse(stub, content, "fax.tiff")
    assert reply.metadata.page_count == 3
    assert metadata(reply)["page_methods"] == ["tesseract-ocr"] * 3
    parts = reply.markdown.split("## Page ")[1:]
    assert [part.split()[0] for part in parts] == ["1", "2", "3"]
    for page, part in zip(document, parts, strict=True):
        assert recall(page.get_text(), part) >= RECALL, part


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header that claims width x height pixels, followed by almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))


def test_limits_refuse_bombs_and_long_documents(stub: pb_grpc.DocumentsStub) -> None:
    with pytest.raises(grpc.RpcError) as bomb:
        parse(stub, bomb_png(40_000, 40_000), "bomb.png")
    assert bomb.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1600000000 pixels" in bomb.value.details()
    assert f"the limit is {MAX_PIXELS} pixels per image (--doc-ocr-max-pixels)" in (
        bomb.value.details()
    )
    small = Image.new("L", (40, 20), 255)
    long_tiff = encoded(small, "TIFF", save_all=True, append_images=[small] * MAX_PAGES)
    with pytest.raises(grpc.RpcError) as pages:
        parse(stub, long_tiff, "long.tiff")
    assert pages.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"OCR on {MAX_PAGES + 1} pages; the limit is {MAX_PAGES}" in pages.value.details()
    # A PDF page too large to render at 200 dpi is rendered at a lower resolution instead.
    huge = pymupdf.open()
    page = huge.new_page(width=72 * 40, height=72 * 40)  # 40 x 40 inches
    page.insert_text((72, 72), "x")  # a text layer elsewhere: only page 2 needs OCR
    blank = huge.new_page(width=72 * 40, height=72 * 40)
    blank.draw_rect(pymupdf.Rect(0, 0, 10, 10), fill=(0, 0, 0))
    reply = parse(stub, huge.tobytes(), "poster.pdf")
    dpi = int(re.search(r"(\d+) dpi", " ".join(reply.warnings)).group(1))  # type: ignore[union-attr]
    assert (40 * dpi) ** 2 <= MAX_PIXELS


def test_the_verifier_checks_the_engine() -> None:
    rows = verify_env.check_ocr()
    assert [r.check for r in rows] == ["ocr engine", "ocr language eng", "ocr language osd"]
    assert all(r.ok for r in rows), rows
    assert rows[0].installed.startswith("tesseract ")
    missing = verify_env.check_ocr("no-such-ocr-binary")
    assert not missing[0].ok and "apt-get install tesseract-ocr" in missing[0].problem


def test_broken_ocr_models_are_failed_precondition(
    stub: pb_grpc.DocumentsStub, ocr_server: InProcessServer
) -> None:
    """Files that look complete but do not load: a clear FAILED_PRECONDITION, no download.

    On this server's default --doc-timeout-s: trying to load docstrange's models takes
    seconds on a busy two-core machine, longer than the fault tests' short timeout."""
    from zopilot_server.documents import ocr_models

    model_dir = Path(ocr_server.config.doc_model_dir)
    created = [model_dir / candidates[0] for candidates in ocr_models.REQUIRED.values()]
    image = encoded(render(text_pdf()[0], 150), "PNG")
    scan = image_only_pdf([render(text_pdf()[0], 150)])
    errors = []
    try:
        for path in created:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not a model")
        for content, name in ((image, "photo.png"), (scan, "scan.pdf")):
            with pytest.raises(grpc.RpcError) as info:
                parse(stub, content, name)
            errors.append(info.value)
    finally:
        for path in created:
            path.unlink()
    for error in errors:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert "could not be loaded" in error.details()
        assert "ocr_models fetch --dir" in error.details()
    # With the broken files gone the bundled engine reads the page again.
    assert "committee" in parse(stub, image, "photo.png").markdown


def test_a_small_image_is_enlarged_before_it_is_read(stub: pb_grpc.DocumentsStub) -> None:
    # 10 pt text at 60 dpi: letters about 6 px tall, which Tesseract reads as noise
    # (recall 0.19) unless the image is enlarged first.
    image = render(text_pdf(PARAGRAPHS[:1])[0], 60)
    assert image.size == (249, 350)
    reply = parse(stub, encoded(image, "PNG"), "small.png")
    assert recall(PARAGRAPHS[0], reply.markdown) >= RECALL
    assert any("upscaled 4x" in warning for warning in reply.warnings), reply.warnings


@pytest.mark.parametrize(
    ("size", "factor"),
    [
        ((150, 214), 4.0),  # the poster: as much as allowed
        ((311, 438), 3.0),  # to about 1000 px on the short side, in half steps
        ((600, 800), 1.5),
        ((700, 900), 1.0),  # under 1.5x is not worth a second size
        ((3000, 4000), 1.0),
        ((1000, 10), 4.0),
        ((500, 5000), 1.5),  # 2x would pass the pixel limit (8M): the largest half step under
    ],
)
def test_the_upscale_factor(size: tuple[int, int], factor: float) -> None:
    from zopilot_server.documents.readers.ocr import upscale_factor

    assert upscale_factor(*size, max_pixels=MAX_PIXELS) == factor
