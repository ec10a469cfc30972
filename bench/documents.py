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
Compare ratios from one run, not numbers across runs. The in-process side is
docstrange's own processor even where the worker now runs our walkers (readers/docx.py,
pptx.py, xlsx.py, csv_data.py), so ``ratio`` also says what the walkers cost against it.

``fidelity`` (issue 12): for every fixture, the share of an independent extractor's
words (a multiset: a word twice must come back twice) found in our ``text`` output,
and, for comparison, in docstrange's own processor's markdown. The extractors read the
file without docstrange or our code: the raw OOXML ``<w:t>`` / ``<a:t>`` text of docx
(body, headers, footers) and pptx (slides, charts), openpyxl's cell values, Python's
csv module, lxml's text of html (scripts and styles dropped), the raw txt, and PyMuPDF's
words for pdf (the same library our pdf path uses: that figure checks our rendering, not
the extraction). ``--fidelity-only`` skips the throughput rounds.

``pdf_tables``: in process, ms per PDF reading every page with table detection
(``pdf_page_text``, documents/readers/pdf/tables.py) and without it
(``page.get_text()``), and their ratio, on a plain 3-page PDF, a page with one ruled
table and 10 pages of 20-row tables;
``--pdf-tables-only`` prints just that, without starting the server.

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
import re
import statistics
import sys
import tempfile
import time
import zipfile
from collections import Counter
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


def fidelity_documents() -> dict[str, tuple[str, bytes]]:
    """Fixtures for the fidelity figure: the throughput set plus the ones holding what
    docstrange loses (long/nested tables, margins, groups, charts, one-row sheets)."""
    import documents_builders as build

    named = {f"{t}:basic": (t, content) for t, content in documents().items()}
    named.update(
        {
            "docx:fidelity": ("docx", build.docx_fidelity()),
            "docx:long-table": ("docx", build.docx_report(table_rows=60)),
            "pptx:fidelity": ("pptx", build.pptx_fidelity()),
            "xlsx:fidelity": ("xlsx", build.xlsx_fidelity()),
            "csv:fidelity": ("csv", build.CSV_FIDELITY),
            "html:tables": ("html", build.HTML_TABLES),
            "pdf:fidelity": ("pdf", build.pdf_fidelity()),
            "docx:lists": ("docx", build.docx_lists()),
            "docx:merged": ("docx", build.docx_merged_table()),
            "pdf:table": ("pdf", build.pdf_ruled_table()),
        }
    )
    return named


_PUNCT = "\"'.,;:!?()[]{}<>*_#|`"


def words(text: str) -> Counter[str]:
    """Whitespace-separated words, outer punctuation and markdown marks trimmed."""
    found = (w.strip(_PUNCT) for w in re.split(r"[\s|]+", text))
    return Counter(w for w in found if w)


def independent_text(doc_type: str, content: bytes) -> str:
    """The document's text read without docstrange or our walkers."""
    import io

    if doc_type in {"docx", "pptx"}:
        parts = (
            r"word/(document|header\d*|footer\d*)\.xml"
            if doc_type == "docx"
            else (r"ppt/(slides/slide|charts/chart)\d+\.xml")
        )
        tag = "w:t" if doc_type == "docx" else "a:t"
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            xml = [archive.read(n).decode() for n in archive.namelist() if re.fullmatch(parts, n)]
        pattern = re.compile(rf"<{tag}(?:\s[^>]*)?>([^<]*)</{tag}>")
        import html as html_lib

        return " ".join(html_lib.unescape(t) for x in xml for t in pattern.findall(x))
    if doc_type == "xlsx":
        import openpyxl

        book = openpyxl.load_workbook(io.BytesIO(content), read_only=True, data_only=True)
        cells = [str(v) for s in book for row in s.iter_rows(values_only=True) for v in row]
        book.close()
        return " ".join(v for v in cells if v != "None")
    if doc_type == "csv":
        import csv

        return " ".join(c for row in csv.reader(io.StringIO(content.decode())) for c in row)
    if doc_type == "html":
        import lxml.html

        tree = lxml.html.fromstring(content)
        for bad in tree.xpath("//script|//style"):
            bad.drop_tree()
        return " ".join(tree.itertext())
    if doc_type == "pdf":
        import pymupdf

        with pymupdf.open(stream=content, filetype="pdf") as document:
            return " ".join(w[4] for page in document for w in page.get_text("words"))
    return content.decode()


def kept(reference: Counter[str], ours: Counter[str]) -> float:
    total = sum(reference.values())
    return 1.0 if total == 0 else sum(min(n, ours[w]) for w, n in reference.items()) / total


def fidelity(stub: documents_pb2_grpc.DocumentsStub, work_dir: Path) -> dict[str, Any]:
    """Per fixture and per type: the share of independent words in our text output."""
    per_doc: dict[str, dict[str, float]] = {}
    by_type: dict[str, list[float]] = {}
    for name, (doc_type, content) in fidelity_documents().items():
        reference = words(independent_text(doc_type, content))
        request = pb.DocumentParseRequest(
            content=content, filename=f"f.{doc_type}", formats=[pb.OUTPUT_FORMAT_TEXT]
        )
        ours = kept(reference, words(stub.DocumentParse(request, timeout=60).text))
        row = {"words": sum(reference.values()), "ours": round(ours, 3)}
        if doc_type != "pdf":
            path = work_dir / f"fidelity.{doc_type}"
            path.write_bytes(content)
            theirs = in_process_parser(doc_type)(str(path))
            row["docstrange"] = round(kept(reference, words(theirs)), 3)
        per_doc[name] = row
        by_type.setdefault(doc_type, []).append(ours)
    return {
        "per_type_min": {t: round(min(v), 3) for t, v in by_type.items()},
        "per_doc": per_doc,
    }


def in_process_parser(doc_type: str) -> Callable[[str], str]:
    """The same docstrange processor (or PyMuPDF path) the worker runs, minus isolation."""
    from zopilot_server.documents.readers import docstrange

    if doc_type != "pdf":
        return lambda path: docstrange.run_processor(doc_type, path).content

    def pdf_text(path: str) -> str:
        import pymupdf

        with pymupdf.open(path) as document:
            return "\n\n".join(page.get_text() for page in document)

    return pdf_text


def table_pdf(pages: int, rows: int) -> bytes:
    """``pages`` pages, each a ruled table of ``rows`` x 5 cells between text lines."""
    import documents_builders as build
    import pymupdf

    grid = [[f"h{c}" for c in range(5)]] + [[f"r{r}c{c}" for c in range(5)] for r in range(rows)]
    with pymupdf.open() as document:
        for _ in range(pages):
            with pymupdf.open(stream=build.pdf_ruled_table(grid)) as page:
                document.insert_pdf(page)
        return document.tobytes()


def pdf_table_cost(rounds: int) -> dict[str, Any]:
    """What table detection costs on top of the plain text layer, in process: per
    fixture, ms per document reading every page with ``pdf_page_text`` (tables
    as markdown) and with ``page.get_text()`` (what the worker did before), and their
    ratio. A page without vector drawings skips detection, so plain text should stay
    near 1.0."""
    import documents_builders as build
    import pymupdf
    from zopilot_server.documents.readers.pdf.tables import pdf_page_text

    fixtures = {
        "plain_3_pages": build.pdf_pages(3),
        "one_table_page": build.pdf_ruled_table(),
        "tables_10_pages_20_rows": table_pdf(10, 20),
    }

    def read(content: bytes, tables: bool) -> int:
        found = 0
        with pymupdf.open(stream=content, filetype="pdf") as document:
            for number, page in enumerate(document, start=1):
                if tables:
                    found += pdf_page_text(page, number, [])[1]
                else:
                    page.get_text()
        return found

    result: dict[str, Any] = {"rounds": rounds}
    for name, content in fixtures.items():
        tables = read(content, True)  # warm up
        read(content, False)
        with_s = timed(rounds, lambda c=content: read(c, True))
        without_s = timed(rounds, lambda c=content: read(c, False))
        result[name] = {
            "tables_found": tables,
            "text_only_ms": round(without_s / rounds * 1000, 2),
            "with_tables_ms": round(with_s / rounds * 1000, 2),
            "ratio": round(with_s / without_s, 2),
        }
    return result


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
    return stream.start_server(model_dir, cache_dir)  # its log is drained there


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
            result = {
                "fidelity": fidelity(stub, work_dir),
                "pdf_tables": pdf_table_cost(args.rounds * args.per_round),
            }
            if not args.fidelity_only:
                result.update(measure(stub, docs, paths, args))
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
    parser.add_argument("--fidelity-only", action="store_true", help="skip the throughput")
    parser.add_argument("--cache-dir", default=str(REPO / ".cache" / "test-models"))
    parser.add_argument("--ocr-pages", type=int, default=2, help="pages per OCR condition")
    parser.add_argument(
        "--pdf-tables-only", action="store_true", help="only the in-process pdf table cost"
    )
    args = parser.parse_args()
    if args.pdf_tables_only:
        print(json.dumps({"pdf_tables": pdf_table_cost(args.rounds * args.per_round)}, indent=2))
        return
    with tempfile.TemporaryDirectory(prefix="zopilot-bench-docs-") as work:
        result = bench(args, Path(work))
    result["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
