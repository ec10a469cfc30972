"""The parser workers behind DocumentParse, driven by test-only faults (--doc-fault-injection)
on a one-worker server: size limits, a hung, crashed or network-using parser, call
deadlines, idle workers killed, parser bugs; the server keeps serving and leaves no
temp files.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import signal
import socket

import documents_builders as build
import grpc
import pytest
from documents_calls import FAULT_MAX_BYTES, Parse, assert_serves, requests_dir
from support import InProcessServer, rpc_error, wait_until
from zopilot_client.pb import documents_pb2 as pb
from zopilot_client.pb import documents_pb2_grpc as pb_grpc
from zopilot_server.config import ServerConfig


def test_size_limit_names_the_limit_and_matches_the_transport(
    fault_parse: Parse, fault_server: InProcessServer
) -> None:
    error = rpc_error(lambda: fault_parse(b"x" * (FAULT_MAX_BYTES + 1), "big.txt"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the limit is {FAULT_MAX_BYTES} bytes" in error.details()
    # Past the limit plus the 1 MiB envelope, gRPC itself refuses the message.
    receive_limit = fault_server.config.max_receive_message_bytes
    error = rpc_error(lambda: fault_parse(b"x" * (receive_limit + 1), "huge.txt"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_serves(fault_parse, fault_server)


def test_ocr_without_models_uses_the_bundled_engine(fault_parse: Parse) -> None:
    """No docstrange models: the bundled engine reads the pages (test_documents_ocr.py
    checks what it reads); these have no text, which the reply says."""
    for content, filename, pages in ((build.pdf_pages(1, text=False), "scan.pdf", 1),
                                     (build.png_image(), "photo.png", 1)):  # fmt: skip
        reply = fault_parse(content, filename)
        assert reply.metadata.method == "tesseract-ocr"
        assert reply.metadata.page_count == pages
        assert "no text found in the document" in reply.warnings


def _worker_pids(server: InProcessServer) -> list[int]:
    pool = server.running.documents.parser.pool
    assert wait_until(lambda: len(pool.worker_pids()) == 1 and pool.idle_count == 1)
    return pool.worker_pids()


def test_hung_parser_times_out_and_busy_pool_says_so(
    fault_parse: Parse, fault_server: InProcessServer
) -> None:
    before = _worker_pids(fault_server)
    pool = fault_server.running.documents.parser.pool
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        hung = executor.submit(fault_parse, b"x", "zopilot-fault-hang.txt")
        assert wait_until(lambda: pool.idle_count == 0)
        busy = rpc_error(lambda: fault_parse(b"x", "other.txt"))
        assert busy.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        error = rpc_error(hung.result)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "--doc-timeout-s" in error.details()
    assert list(requests_dir(fault_server).iterdir()) == []
    assert _worker_pids(fault_server) != before  # replaced
    assert_serves(fault_parse, fault_server)


def test_crashed_parser_is_replaced(fault_parse: Parse, fault_server: InProcessServer) -> None:
    before = _worker_pids(fault_server)
    error = rpc_error(lambda: fault_parse(b"x", "zopilot-fault-crash.txt"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parser crashed" in error.details()
    assert list(requests_dir(fault_server).iterdir()) == []
    assert _worker_pids(fault_server) != before
    assert_serves(fault_parse, fault_server)


def test_call_deadline_stops_the_parser(fault_parse: Parse, fault_server: InProcessServer) -> None:
    before = _worker_pids(fault_server)
    error = rpc_error(lambda: fault_parse(b"x", "zopilot-fault-hang.txt", timeout=1.0))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server notices the deadline on its own clock: wait for it to clean up.
    assert wait_until(lambda: not list(requests_dir(fault_server).iterdir()))
    assert _worker_pids(fault_server) != before
    assert_serves(fault_parse, fault_server)


def test_worker_network_fails_at_once(fault_parse: Parse) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        reply = fault_parse(f"127.0.0.1:{port}".encode(), "zopilot-fault-network.txt", timeout=5)
        listener.settimeout(0)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    report = dict(line.split(": ", 1) for line in reply.markdown.splitlines())
    for attempt in ("tcp", "socket", "dns"):
        assert report[attempt].startswith("blocked (NetworkDisabled"), report
    if "netns" in report["guard"]:
        assert report["raw"].startswith("blocked"), report


def test_close_stops_workers_and_removes_scratch(tiny_config: ServerConfig) -> None:
    server = InProcessServer(dataclasses.replace(tiny_config, doc_workers=1))
    parser = server.running.documents.parser
    with server.channel() as channel:
        stub = pb_grpc.DocumentsStub(channel)
        stub.DocumentParse(pb.DocumentParseRequest(content=b"hi", filename="a.txt"), timeout=60)
    processes = parser.pool.worker_processes()
    scratch = parser.scratch_root
    server.stop()
    assert scratch is not None and not scratch.exists()
    assert processes and not any(p.is_alive() for p in processes)


def test_worker_killed_while_idle_is_replaced(
    fault_parse: Parse, fault_server: InProcessServer
) -> None:
    (pid,) = _worker_pids(fault_server)
    (process,) = fault_server.running.documents.parser.pool.worker_processes()
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not process.is_alive())
    assert_serves(fault_parse, fault_server)  # the dead worker is noticed, not used
    assert _worker_pids(fault_server) != [pid]


def test_parser_bug_is_internal_and_the_server_keeps_serving(
    fault_parse: Parse, fault_server: InProcessServer
) -> None:
    error = rpc_error(lambda: fault_parse(b"x", "zopilot-fault-bug.txt", request_id="bug-1"))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "bug-1" in error.details()
    assert_serves(fault_parse, fault_server)
