"""Hostile documents against the parser workers (issue 22, items 9, 10 and 12): a memory
bomb is capped and its worker replaced, the XLSX cell budget refuses before reading,
workers get no API key, fail at once when they cannot start, and scratch dirs of killed
servers are removed.
"""

from __future__ import annotations

import fcntl
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import openpyxl
import pytest
from grpc_health.v1 import health_pb2
from support import MIB, InProcessServer, field_violations, rpc_error, wait_until
from zopilot_client.pb import documents_pb2 as dpb
from zopilot_client.pb import documents_pb2_grpc as dpb_grpc


def _xlsx_spanning_the_whole_sheet() -> bytes:
    """4.7 KB: A1 and XFD1048576, so a dense reader allocates 17 billion cells."""
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet["A1"] = "top"
    sheet["XFD1048576"] = "bottom"
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def _server_rss() -> int:
    """This process's resident memory: the in-process server's, so a bomb that were
    parsed in the server instead of a worker would show here."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


SERVER_RSS_GROWTH_LIMIT = 200 * MIB


@pytest.fixture(scope="module")
def capped_server(tiny_config: Any) -> Iterator[InProcessServer]:
    """The memory cap as the last line: the cell budget is off, so the bomb reaches it."""
    import dataclasses

    config = dataclasses.replace(
        tiny_config, doc_workers=1, doc_worker_memory_mib=1536, doc_max_cells=0
    )
    server = InProcessServer(config)
    yield server
    server.stop()


def test_parser_memory_bomb_is_capped_and_the_worker_replaced(
    capped_server: InProcessServer,
) -> None:
    pool = capped_server.running.documents.parser.pool
    assert wait_until(lambda: len(pool.worker_pids()) == 1, timeout=60)
    (before,) = pool.worker_pids()
    with capped_server.channel() as channel:
        stub = dpb_grpc.DocumentsStub(channel)
        request = dpb.DocumentParseRequest(
            content=_xlsx_spanning_the_whole_sheet(), filename="bomb.xlsx"
        )
        rss_before = _server_rss()
        error = rpc_error(lambda: stub.DocumentParse(request, timeout=60))
        assert _server_rss() - rss_before < SERVER_RSS_GROWTH_LIMIT
        assert error.code() in (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "1536 MiB (--doc-worker-memory-mib)" in error.details()
        assert wait_until(lambda: pool.worker_pids() not in ([], [before]), timeout=60)
        reply = stub.DocumentParse(
            dpb.DocumentParseRequest(content=b"still here", filename="a.txt"), timeout=60
        )
    assert "still here" in reply.markdown


def test_xlsx_over_the_cell_budget_is_refused_before_it_is_read(
    tiny_server: InProcessServer, docs: dpb_grpc.DocumentsStub
) -> None:
    """The default budget (2,000,000 cells) refuses the 17-billion-cell workbook at
    once: INVALID_ARGUMENT naming --doc-max-cells, the same worker still serving."""
    pool = tiny_server.running.documents.parser.pool
    size = tiny_server.config.doc_workers
    assert wait_until(lambda: len(pool.worker_pids()) == size, timeout=60)
    workers = sorted(pool.worker_pids())
    request = dpb.DocumentParseRequest(content=_xlsx_spanning_the_whole_sheet(), filename="b.xlsx")
    rss_before = _server_rss()
    error = rpc_error(lambda: docs.DocumentParse(request, timeout=60))
    assert _server_rss() - rss_before < SERVER_RSS_GROWTH_LIMIT
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    message = field_violations(error)["content"]
    assert "more than 2000000 cells" in message
    assert "--doc-max-cells 2000000" in message
    assert sorted(pool.worker_pids()) == workers  # refused, not crashed or capped


def _xlsx_sheets(*shapes: tuple[int, int]) -> bytes:
    """One sheet per (rows, columns), every cell filled with its coordinate."""
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for number, (rows, columns) in enumerate(shapes, 1):
        sheet = workbook.create_sheet(f"s{number}")
        for row in range(1, rows + 1):
            sheet.append([f"r{row}c{column}" for column in range(1, columns + 1)])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def test_cell_budget_counts_every_sheet_and_lets_a_workbook_under_it_parse(
    make_server: Callable[..., InProcessServer],
) -> None:
    server = make_server(doc_max_cells=1000, doc_workers=1)
    with server.channel() as channel:
        stub = dpb_grpc.DocumentsStub(channel)
        # Four sheets of 300 cells: each under the budget, together over it.
        over = dpb.DocumentParseRequest(content=_xlsx_sheets(*[(30, 10)] * 4), filename="o.xlsx")
        error = rpc_error(lambda: stub.DocumentParse(over, timeout=60))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "the limit is --doc-max-cells 1000" in field_violations(error)["content"]
        under = dpb.DocumentParseRequest(
            content=_xlsx_sheets((50, 10), (25, 20)), filename="u.xlsx"
        )
        reply = stub.DocumentParse(under, timeout=60)
    assert reply.metadata.sheet_count == 2
    assert "| r50c1 |" in reply.markdown and "r25c20 |" in reply.markdown


@pytest.mark.parametrize(
    ("sheet", "cells"),
    [
        # Excel's own form: every row and cell names its position (the fast path).
        ('<row r="2"><c r="C2"/></row><row r="7"><c r="B7"/></row>', 7 * 3),
        # Positions left out are the next ones, as openpyxl reads them.
        ("<row><c/><c/><c/><c/></row><row/><row><c/></row>", 3 * 4),
        # Prefixed tags, a reference past Excel's last column, an absurd row number.
        ('<x:row r="1"><x:c r="ZZZZ1"/></x:row>', 475254),
        ('<row r="99999999999999999999"><c r="A5"/></row>', 10**12),
    ],
)
def test_cell_count_reads_the_used_range_openpyxl_would_fill(sheet: str, cells: int) -> None:
    from zopilot_server.documents.worker import limits

    xml = f'<worksheet xmlns:x="x"><sheetData>{sheet}</sheetData></worksheet>'.encode()
    assert limits.sheet_cells(io.BytesIO(xml), declared=0, budget=10**15) == cells


def test_worker_environment_has_no_api_key(
    make_server: Callable[..., InProcessServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOPILOT_API_KEY", "hostile-secret")
    server = make_server(doc_workers=1)
    pool = server.running.documents.parser.pool
    assert wait_until(lambda: len(pool.worker_pids()) == 1, timeout=60)
    (pid,) = pool.worker_pids()
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert not [e for e in environ if e.startswith(b"ZOPILOT_API_KEY=")]
    assert any(e.startswith(b"PATH=") for e in environ)


def test_documents_fail_at_once_when_workers_cannot_start(
    make_server: Callable[..., InProcessServer],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A docstrange that cannot be imported (spawned workers inherit sys.path)."""
    broken = tmp_path / "shadow" / "docstrange"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('docstrange is broken (test)')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "shadow"))
    server = make_server(doc_workers=1)
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    assert wait_until(lambda: server.health("zopilot.v1.Documents") == not_serving, timeout=60)
    assert server.health("zopilot.v1.Generation") == health_pb2.HealthCheckResponse.SERVING
    with server.channel() as channel:
        stub = dpb_grpc.DocumentsStub(channel)
        started = time.monotonic()
        error = rpc_error(
            lambda: stub.DocumentParse(
                dpb.DocumentParseRequest(content=b"hello", filename="a.txt"), timeout=60
            )
        )
    assert time.monotonic() - started < 30  # "at once": a hang would take the full 60 s
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "docstrange is broken (test)" in error.details()


def test_stale_scratch_dirs_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    from zopilot_server.documents.worker import sandbox

    stale = tmp_path / f"{sandbox.SCRATCH_PREFIX}killed"
    stale.mkdir()
    (stale / ".owner.lock").touch()
    (stale / "left.bin").write_bytes(b"x")
    alive = tmp_path / f"{sandbox.SCRATCH_PREFIX}alive"
    alive.mkdir()
    fd = sandbox.claim_scratch_root(str(alive))
    young = tmp_path / f"{sandbox.SCRATCH_PREFIX}starting"  # no lock yet, just created
    young.mkdir()
    try:
        removed = sandbox.remove_stale_scratch(str(tmp_path))
    finally:
        os.close(fd)
    assert removed == [str(stale)]
    assert alive.exists() and young.exists()


def test_server_start_removes_a_killed_servers_scratch_dir(
    make_server: Callable[..., InProcessServer],
) -> None:
    stale = Path(tempfile.mkdtemp(prefix="zopilot-docs-"))
    lock = os.open(stale / ".owner.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.close(lock)  # its owner is gone: the lock is free
    server = make_server(doc_prestart=False)
    assert not stale.exists()
    assert server.running.documents.parser.scratch_root.exists()
