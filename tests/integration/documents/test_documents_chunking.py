"""DocumentParse chunking: token limits with the served model's real tokenizer, tables
never cut inside a row, provenance (heading path, pages, sheets), exact reassembly, and
hostile options; through the chunker itself and through the real server and CLI."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import documents_builders as build
import grpc
import pytest
import zopilot_client as zc
from support import InProcessServer, violated_fields
from zopilot_client.pb import documents_pb2 as pb
from zopilot_client.pb import documents_pb2_grpc as pb_grpc
from zopilot_server.documents.chunking import (
    ChunkingRefused,
    ChunkingRequest,
    chunk_markdown,
    page_marks,
)
from zopilot_server.documents.server.chunk_tokenizers import counter, token_starts

ZOPILOT = str(Path(sys.executable).parent / "zopilot")
TABLE_HEADER = "| Item | Price | Note |\n| --- | --- | --- |\n"
MARKDOWN = (
    "Preamble before any heading.\n\n"
    "# Guide\n\nThe guide starts here. It has two sentences!\n\n"
    "## Setup\n\n" + " ".join(f"word{n}" for n in range(400)) + "\n\n"
    + TABLE_HEADER
    + "".join(f"| item {n} | {n}.50 | note {n} |\n" for n in range(80))
    + "\n```python\n" + "".join(f"x{n} = {n}\n" for n in range(6)) + "```\n\n"
    "## Use\n\nShort. Closing words.\n"
)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir))


@pytest.fixture(scope="module")
def count(tokenizer: Any) -> Any:
    return counter(tokenizer)


def _assert_sound(markdown: str, chunks: list[Any], max_tokens: int, count: Any) -> None:
    """Reassembly, tiling, limits and whole table rows: what every chunking promises."""
    assert "".join(c.text[c.prefix_chars :] for c in chunks) == markdown
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(markdown)
    for before, after in itertools.pairwise(chunks):
        assert before.char_end == after.char_start
    assert [c.token_count for c in chunks] == count([c.text for c in chunks])
    assert max(c.token_count for c in chunks) <= max_tokens
    for chunk in chunks:
        body = markdown[chunk.char_start : chunk.char_end]
        assert chunk.text.endswith(body)
        for line in chunk.text.splitlines():
            if line.startswith("|"):
                assert line.rstrip().endswith("|"), f"a table row was cut: {line!r}"


@pytest.mark.parametrize("indexed", [True, False], ids=["offsets", "piece-counts"])
@pytest.mark.parametrize(("max_tokens", "overlap"), [(64, 0), (64, 16), (200, 40), (4096, 0)])
def test_chunks_reassemble_the_markdown_within_the_limit(
    tokenizer, count, max_tokens, overlap, indexed
):
    warnings: list[str] = []
    starts = token_starts(tokenizer) if indexed else None
    request = ChunkingRequest(max_tokens, overlap)
    chunks = chunk_markdown(MARKDOWN, request, count, [], warnings, starts)
    _assert_sound(MARKDOWN, chunks, max_tokens, count)
    assert warnings == []
    if max_tokens == 4096:
        assert len(chunks) == 1
        return
    # Sections start chunks: "## Use" is not glued to the end of the code block.
    assert any(markdown_start(c, MARKDOWN).startswith("## Use") for c in chunks)
    # The code block fits the budget, so it is never cut.
    code = [c for c in chunks if "```python" in c.text]
    assert len(code) == 1 and code[0].text.count("```") == 2
    # Every continuation of the long table repeats its header row.
    rows = [c for c in chunks if "| item " in markdown_start(c, MARKDOWN)]
    assert len(rows) > 1
    assert TABLE_HEADER + "| item 0 |" in markdown_start(rows[0], MARKDOWN)
    assert all(c.text.startswith(TABLE_HEADER) and c.prefix_chars == len(TABLE_HEADER)
               for c in rows[1:])  # fmt: skip
    assert chunks[0].heading_path == ()
    paths = {c.heading_path for c in chunks}
    assert ("Guide", "Setup") in paths and ("Guide", "Use") in paths
    if overlap:
        prose = [c for c in chunks[1:] if c.prefix_chars and "| item" not in c.text]
        assert prose, "no chunk carries an overlap"
        for chunk in prose:
            assert count([chunk.text[: chunk.prefix_chars]])[0] <= overlap


def markdown_start(chunk: Any, markdown: str) -> str:
    return markdown[chunk.char_start : chunk.char_end]


def test_a_row_or_word_over_the_budget_is_split_between_characters_with_a_warning(count):
    markdown = "# T\n\n" + "x" * 3000 + "\n\n| a | b |\n| --- | --- |\n| " + "y " * 400 + "| z |\n"
    warnings: list[str] = []
    chunks = chunk_markdown(markdown, ChunkingRequest(32), count, [], warnings)
    assert "".join(c.text[c.prefix_chars :] for c in chunks) == markdown
    assert max(c.token_count for c in chunks) <= 32
    assert any("a word alone is over the token budget" in w for w in warnings)
    assert any("a table row alone is over the token budget" in w for w in warnings)


@pytest.mark.parametrize(
    "request_",
    [ChunkingRequest(0), ChunkingRequest(-5), ChunkingRequest(10**9), ChunkingRequest(8, 8)],
)
def test_impossible_requests_are_refused(count, request_):
    with pytest.raises(ChunkingRefused):
        chunk_markdown("text", request_, count)


def test_an_empty_document_has_no_chunks_and_says_so(count):
    warnings: list[str] = []
    assert chunk_markdown(" \n\n ", ChunkingRequest(16), count, [], warnings) == []
    assert warnings == ["chunking: the document has no text; no chunks"]


def test_page_marks_number_pages_slides_and_sheets_in_workbook_order():
    pdf = "## Page 1\n\na\n\n## Page 3\n\nb"
    assert page_marks("pdf", pdf) == [(0, 1), (14, 3)]
    sheets = "## Sheet: B\n\n| x |\n\n## Sheet: D\n\n| y |"
    assert page_marks("xlsx", sheets, ["A", "B", "C", "D"]) == [(0, 2), (20, 4)]
    assert page_marks("docx", pdf) == []


# --------------------------------------------------------------------- through the RPC


@pytest.fixture(scope="module")
def stub(tiny_server: InProcessServer) -> Iterator[pb_grpc.DocumentsStub]:
    with grpc.insecure_channel(tiny_server.target) as channel:
        yield pb_grpc.DocumentsStub(channel)


def _parse(stub: Any, content: bytes, filename: str, **chunking: Any) -> Any:
    request = pb.DocumentParseRequest(
        content=content, filename=filename, chunking=pb.ChunkingOptions(**chunking)
    )
    return stub.DocumentParse(request, timeout=60)


def test_pdf_chunks_carry_their_pages_and_only_markdown_was_asked_implicitly(stub):
    pdf = build.pdf_pages(6)
    request = pb.DocumentParseRequest(
        content=pdf,
        filename="p.pdf",
        formats=[pb.OUTPUT_FORMAT_TEXT],
        chunking=pb.ChunkingOptions(max_tokens=24),
    )
    response = stub.DocumentParse(request, timeout=60)
    assert not response.HasField("markdown") and response.HasField("text")
    assert response.metadata.chunk_tokenizer  # the served model's id
    assert len(response.chunks) >= 3
    for chunk in response.chunks:
        assert chunk.token_count <= 24
        pages = {int(p) for p in _page_numbers(chunk.text)}
        assert pages <= set(range(chunk.page_start, chunk.page_end + 1)), chunk
    assert response.chunks[0].page_start == 1 and response.chunks[-1].page_end == 6
    markdown = stub.DocumentParse(pb.DocumentParseRequest(content=pdf, filename="p.pdf")).markdown
    assert "".join(c.text[c.prefix_chars :] for c in response.chunks) == markdown


def _page_numbers(text: str) -> list[str]:
    return re.findall(r"Page (\d+) marker", text)


def test_workbook_chunks_number_sheets_in_workbook_order(stub):
    response = _parse(stub, build.xlsx_workbook(), "w.xlsx", max_tokens=12)
    sheets = {(c.page_start, c.page_end) for c in response.chunks}
    assert (1, 1) in sheets and (2, 2) in sheets
    costs = [c for c in response.chunks if "Rent" in c.text]
    assert costs and all(c.page_start == 2 and c.heading_path == ["Sheet: Costs"] for c in costs)


def test_presentation_chunks_carry_their_slides(stub):
    response = _parse(stub, build.pptx_deck(3), "deck.pptx", max_tokens=10)
    for chunk in response.chunks:
        numbers = {int(n) for n in re.findall(r"Slide title (\d)", chunk.text)}
        assert numbers <= set(range(chunk.page_start, chunk.page_end + 1)), chunk
    assert {c.page_start for c in response.chunks} == {1, 2, 3}


@pytest.mark.parametrize(
    ("chunking", "field"),
    [
        ({"max_tokens": 0}, "chunking.max_tokens"),
        ({"max_tokens": -1}, "chunking.max_tokens"),
        ({"max_tokens": 2**31 - 1}, "chunking.max_tokens"),
        ({"max_tokens": 10, "overlap_tokens": 10}, "chunking.overlap_tokens"),
        ({"max_tokens": 10, "overlap_tokens": -1}, "chunking.overlap_tokens"),
        ({"max_tokens": 10, "tokenizer": "t" * 300}, "chunking.tokenizer"),
        ({"max_tokens": 10, "tokenizer": "../../etc/passwd"}, "chunking.tokenizer"),
    ],
)
def test_bad_chunking_is_invalid_argument(stub, chunking, field):
    with pytest.raises(grpc.RpcError) as caught:
        _parse(stub, b"hello", "a.txt", **chunking)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == [field]


def test_a_tokenizer_that_is_not_installed_is_failed_precondition(stub):
    with pytest.raises(grpc.RpcError) as caught:
        _parse(stub, b"hello", "a.txt", max_tokens=10, tokenizer="nobody/no-such-model-xyz")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not installed" in caught.value.details()


def test_client_and_cli_return_the_same_chunks(tiny_server, tmp_path):
    path = tmp_path / "guide.txt"
    path.write_text("Alpha beta gamma. " * 60)
    with zc.Client(tiny_server.target) as client:
        document = client.parse_document(path, chunk_tokens=32, chunk_overlap_tokens=4)
    assert len(document.chunks) > 2
    assert "".join(c.body for c in document.chunks) == document.markdown
    done = subprocess.run(
        [ZOPILOT, "parse", str(path), "--chunks", "32", "--chunk-overlap", "4",
         "--target", tiny_server.target],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert [line["text"] for line in lines] == [c.text for c in document.chunks]
    assert lines[0]["token_count"] == document.chunks[0].token_count


def test_too_many_chunks_is_refused_not_built(count, monkeypatch):
    from zopilot_server.documents import chunking

    monkeypatch.setattr(chunking, "MAX_CHUNKS", 5)
    with pytest.raises(ChunkingRefused, match="more than 5 chunks"):
        chunk_markdown("word " * 400, ChunkingRequest(2), count)


def test_concurrent_chunked_parses_share_the_served_tokenizer(stub):
    import concurrent.futures

    texts = [(f"Sentence {n} of document {d}. " * 40).encode() for d in range(6) for n in (1,)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda t: _parse(stub, t, "c.txt", max_tokens=20), texts))
    for text, reply in zip(texts, replies, strict=True):
        assert "".join(c.text[c.prefix_chars :] for c in reply.chunks) == reply.markdown
        assert reply.markdown.strip() == text.decode().strip()
        assert max(c.token_count for c in reply.chunks) <= 20
