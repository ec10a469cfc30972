"""DocumentParse throughput: gRPC (isolated workers) vs docstrange in-process, same run.

Builds small real documents (docx, xlsx, pptx, csv, html, txt, a 3-page text PDF),
starts the real server in a subprocess (tiny random Llama; documents need no model),
and for each type measures, in alternating rounds:

- in-process: the same docstrange processor the worker uses, called directly on the
  file (``processor.process(path)``; for PDFs the PyMuPDF text extraction), markdown out;
- gRPC: ``DocumentParse`` over loopback, markdown out, one request at a time.

It prints JSON with docs/s per type and overall, ``ratio`` = gRPC / in-process docs/s
(target >= 0.8 for small documents), ``ratio_median_round``, the median of the
per-round ratios, which shrugs off a round slowed by some other process, and
``overhead_ms_per_doc``, what one request costs more through gRPC. A second
figure, ``concurrent``, runs as many client threads as the server has workers.
Compare ratios from one run, not numbers across runs.

``ocr`` (``--ocr-pages``, 0 skips it): the bundled OCR engine through the RPC, with no
docstrange models. English Letter pages with a text layer are rendered to images and
sent as png / jpg or as an image-only PDF; per condition it reports word recall against
the text layer (target >= 0.95 for clean pages at 200 dpi) and seconds per page.

    .venv/bin/python bench/documents.py --rounds 3 --per-round 10
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import grpc  # noqa: E402
from zopilot_client.pb import documents_pb2 as pb  # noqa: E402
from zopilot_client.pb import documents_pb2_grpc  # noqa: E402


def documents() -> dict[str, bytes]:
    import documents_builders as build

    return {
        "docx": build.docx_report(),
        "xlsx": build.xlsx_workbook(),
        "pptx": build.pptx_deck(),
        "csv": build.csv_rows(50),
        "html": build.HTML_PAGE,
        "txt": build.TEXT_NOTE,
        "pdf": build.pdf_pages(3),
    }


def in_process_parser(doc_type: str) -> Callable[[str], str]:
    """The same docstrange processor (or PyMuPDF path) the worker runs, minus isolation."""
    from zopilot_server.documents import extract

    if doc_type != "pdf":
        return lambda path: extract.run_processor(doc_type, path).content

    def pdf_text(path: str) -> str:
        import pymupdf

        with pymupdf.open(path) as document:
            return "\n\n".join(page.get_text() for page in document)

    return pdf_text


def timed(count: int, call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    for _ in range(count):
        call()
    return time.perf_counter() - started


def start_server(cache_dir: Path, work_dir: Path, workers: int) -> tuple[Any, str]:
    """The real server in a subprocess, as bench/stream.py starts it, on the tiny model."""
    import stream

    os.environ["ZOPILOT_DOC_WORKERS"] = str(workers)  # the server's env fallback
    model_dir = stream.model_dirs(["tiny"], cache_dir, work_dir)["tiny"]
    process, target = stream.start_server(model_dir, cache_dir)
    # Keep draining its log (a line per document), or a full pipe would stall it.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    return process, target


def bench(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    docs = documents()
    paths = {}
    for doc_type, content in docs.items():
        paths[doc_type] = work_dir / f"sample.{doc_type}"
        paths[doc_type].write_bytes(content)
    # No docstrange OCR models: images and scans go to the bundled engine (ocr section).
    os.environ["ZOPILOT_DOC_MODEL_DIR"] = str(work_dir / "no-ocr-models")
    process, target = start_server(Path(args.cache_dir), work_dir, args.workers)
    try:
        with grpc.insecure_channel(target) as channel:
            stub = documents_pb2_grpc.DocumentsStub(channel)
            result = measure(stub, docs, paths, args)
            if args.ocr_pages:
                result["ocr"] = ocr_bench(stub, args.ocr_pages)
            return result
    finally:
        process.terminate()
        process.wait(30)


def measure_type(
    stub: documents_pb2_grpc.DocumentsStub,
    doc_type: str,
    content: bytes,
    path: Path,
    rounds: int,
    per_round: int,
) -> dict[str, float]:
    """Seconds for rounds x per_round parses on each side, the sides alternating."""
    parse_local = in_process_parser(doc_type)
    request = pb.DocumentParseRequest(content=content, filename=path.name)

    def local() -> Any:
        return parse_local(str(path))

    def remote() -> Any:
        return stub.DocumentParse(request, timeout=60)

    local(), remote()  # warm both sides
    seconds: dict[str, list[float]] = {"in_process_s": [], "grpc_s": []}
    for _ in range(rounds):
        seconds["in_process_s"].append(timed(per_round, local))
        seconds["grpc_s"].append(timed(per_round, remote))
    return seconds


def rates(count: int, seconds: dict[str, list[float]]) -> dict[str, float]:
    """docs/s over all rounds, their ratio, the median of the per-round ratios (robust to
    another process stealing the CPU during one round) and what a request through gRPC
    costs more than the bare parse, in ms (the fixed per-request overhead)."""
    local, remote = sum(seconds["in_process_s"]), sum(seconds["grpc_s"])
    per_round = [a / b for a, b in zip(seconds["in_process_s"], seconds["grpc_s"], strict=True)]
    return {
        "in_process_docs_per_s": round(count / local, 1),
        "grpc_docs_per_s": round(count / remote, 1),
        "ratio": round(local / remote, 3),
        "ratio_median_round": round(statistics.median(per_round), 3),
        "overhead_ms_per_doc": round((remote - local) / count * 1000, 2),
    }


def measure(
    stub: documents_pb2_grpc.DocumentsStub,
    docs: dict[str, bytes],
    paths: dict[str, Path],
    args: argparse.Namespace,
) -> dict[str, Any]:
    per_type: dict[str, dict[str, float]] = {}
    totals: dict[str, list[float]] = {"in_process_s": [], "grpc_s": []}
    count = args.rounds * args.per_round
    for doc_type, content in docs.items():
        seconds = measure_type(
            stub, doc_type, content, paths[doc_type], args.rounds, args.per_round
        )
        per_type[doc_type] = {"bytes": len(content), **rates(count, seconds)}
        for key in totals:
            totals[key] += seconds[key]
    return {
        "per_type": per_type,
        "overall": rates(count * len(docs), totals),
        "concurrent": concurrent_run(stub, docs, args),
    }


def concurrent_run(
    stub: documents_pb2_grpc.DocumentsStub, docs: dict[str, bytes], args: argparse.Namespace
) -> dict[str, float]:
    requests = [
        pb.DocumentParseRequest(content=content, filename=f"sample.{doc_type}")
        for doc_type, content in docs.items()
    ] * (args.rounds * args.per_round)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(lambda r: stub.DocumentParse(r, timeout=60), requests))
    elapsed = time.perf_counter() - started
    return {"client_threads": args.workers, "grpc_docs_per_s": round(len(requests) / elapsed, 1)}


# --- OCR: word recall against the text layer, seconds per page -------------------------

OCR_SENTENCES = (
    "The committee met on Tuesday to review the quarterly budget and the hiring plan.",
    "Members agreed that the new office should open in March, provided the lease is signed.",
    "Several questions remained about travel costs, software licences and training.",
    "Each department will send a short written report by Friday, including any risks.",
    "Invoice 4711 lists twelve chairs, three desks and one large whiteboard for the team.",
    "Delivery to the second floor of the north building is planned for the fifth of June.",
    "The river flows slowly past the old mill, where children gather to watch the boats.",
    "Please return the signed contract before the end of the month to avoid any delay.",
)


def ocr_pages(count: int) -> list[Any]:
    """``count`` Letter pages of English prose (11 pt Helvetica) with a text layer."""
    import pymupdf

    document = pymupdf.open()
    for number in range(count):
        sentences = [OCR_SENTENCES[(number * 3 + i) % len(OCR_SENTENCES)] for i in range(24)]
        page = document.new_page(width=612, height=792)
        text = "\n\n".join(" ".join(sentences[i : i + 4]) for i in range(0, 24, 4))
        page.insert_textbox(pymupdf.Rect(72, 72, 540, 720), text, fontsize=11, fontname="helv")
    return [document[n] for n in range(count)]


def ocr_recall(truth: str, read: str) -> float:
    import collections
    import re

    expected = collections.Counter(re.findall(r"[a-z0-9]+", truth.lower()))
    got = collections.Counter(re.findall(r"[a-z0-9]+", read.lower()))
    return sum(min(n, got[w]) for w, n in expected.items()) / sum(expected.values())


def ocr_bench(stub: documents_pb2_grpc.DocumentsStub, count: int) -> dict[str, Any]:
    """Per condition: mean word recall and seconds per page, one request per page (the
    image-only PDF: one request with every page)."""
    import io

    import pymupdf
    from PIL import Image

    def image(page: Any, dpi: int) -> Any:
        pixmap = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY)
        return Image.frombytes("L", (pixmap.width, pixmap.height), pixmap.samples)

    def encoded(picture: Any, fmt: str) -> bytes:
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt)
        return buffer.getvalue()

    def parse(content: bytes, name: str) -> tuple[str, float]:
        started = time.perf_counter()
        request = pb.DocumentParseRequest(content=content, filename=name)
        reply = stub.DocumentParse(request, timeout=600)
        return reply.markdown, time.perf_counter() - started

    pages = ocr_pages(count)
    truths = [page.get_text() for page in pages]
    conditions: dict[str, Callable[[Any], tuple[bytes, str]]] = {
        "png_200dpi": lambda p: (encoded(image(p, 200), "PNG"), "page.png"),
        "png_300dpi": lambda p: (encoded(image(p, 300), "PNG"), "page.png"),
        "jpg_150dpi": lambda p: (encoded(image(p, 150), "JPEG"), "page.jpg"),
        "low_contrast_200dpi": lambda p: (
            encoded(image(p, 200).point(lambda v: 170 + v * 50 // 255), "PNG"),
            "page.png",
        ),
        "rotated_90_200dpi": lambda p: (
            encoded(image(p, 200).rotate(90, expand=True), "PNG"),
            "page.png",
        ),
    }
    result: dict[str, Any] = {"pages_per_condition": count}
    for name, make in conditions.items():
        recalls, seconds = [], []
        for page, truth in zip(pages, truths, strict=True):
            markdown, elapsed = parse(*make(page))
            recalls.append(ocr_recall(truth, markdown))
            seconds.append(elapsed)
        result[name] = {
            "word_recall": round(statistics.fmean(recalls), 4),
            "s_per_page": round(statistics.fmean(seconds), 2),
        }
    scan = pymupdf.open()
    for page in pages:
        target = scan.new_page(width=612, height=792)
        target.insert_image(target.rect, stream=encoded(image(page, 200), "PNG"))
    markdown, elapsed = parse(scan.tobytes(), "scan.pdf")
    result["image_only_pdf_200dpi"] = {
        "word_recall": round(ocr_recall("\n".join(truths), markdown), 4),
        "s_per_page": round(elapsed / count, 2),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="server --doc-workers")
    parser.add_argument("--cache-dir", default=str(REPO / ".cache" / "test-models"))
    parser.add_argument("--ocr-pages", type=int, default=2, help="pages per OCR condition")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zopilot-bench-docs-") as work:
        result = bench(args, Path(work))
    result["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
