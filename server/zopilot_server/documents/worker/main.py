"""The parser worker process: isolate itself, then parse jobs from a pipe until EOF.

It is started with multiprocessing's "spawn" context (a fresh interpreter: the server
holds torch and gRPC threads, which plain fork would copy in an unsafe state), so this
module and its imports must stay light until ``prepare_worker`` has cut the network.
Replies are plain tuples, because our exceptions do not survive pickling intact:
("ok", ParseOutcome) | ("rejected", field, message) | ("ocr_missing", message) |
("memory", limit_bytes) | ("internal", message). The first message is ("ready", pid,
guard), or ("broken", pid, why) when the parser cannot even be imported.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import tempfile
import traceback
from multiprocessing.connection import Connection
from typing import Any

from ..domain import DocumentRejected, OcrModelsMissing, ParseJob
from .sandbox import WorkerSettings, limit_memory, prepare_worker

log = logging.getLogger("zopilot_server.documents.worker")

Reply = tuple[Any, ...]
# Replies up to this size travel in one frame and are read on the server's event loop;
# larger ones are announced by a frame of their own and read in a thread.
INLINE_REPLY_BYTES = 1024 * 1024
INLINE, LARGE = b"S", b"L"


def worker_main(conn: Connection, settings: WorkerSettings) -> None:
    """Entry point of a worker process."""
    guard = prepare_worker(settings)
    try:
        from . import dispatch
    except Exception as exc:  # noqa: BLE001 - told to the server, which stops retrying
        with contextlib.suppress(OSError):  # the server is gone or stopped waiting
            send_message(conn, ("broken", os.getpid(), f"{type(exc).__name__}: {exc}"))
        return

    try:
        dispatch.warm_up(settings.scratch_root)
    except Exception:  # noqa: BLE001 - a slower first document, not a broken worker
        log.warning("warm-up failed:\n%s", traceback.format_exc())
    # Everything imported so far lives as long as the worker: keep it out of the cyclic
    # garbage collector's full passes, which otherwise walk it during every large parse.
    gc.collect()
    gc.freeze()
    cap = limit_memory(settings.memory_limit_bytes)
    log.debug("address space capped at %d MiB", cap // (1024 * 1024))
    send_message(conn, ("ready", os.getpid(), guard))
    while True:
        try:
            job = receive_job(conn)
        except (EOFError, OSError):
            return  # the server closed the pipe (it kills workers on shutdown)
        reply = run_job(job, settings, guard)
        send_message(conn, reply)
        if reply[0] == "memory":
            return  # a heap that hit its cap is not worth keeping: the pool replaces us


def send_message(conn: Connection, message: object) -> None:
    """The pickled message in one frame when small (``INLINE`` + payload: the server
    reads it on its event loop); a large one as a ``LARGE`` frame, then the payload,
    which the server reads in a thread (pool._Worker.receive)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(payload) <= INLINE_REPLY_BYTES:
        conn.send_bytes(INLINE + payload)
        return
    conn.send_bytes(LARGE)
    conn.send_bytes(payload)


def receive_job(conn: Connection) -> ParseJob:
    """The next job, as pool._Worker.call sends it (raw pickled bytes)."""
    return pickle.loads(conn.recv_bytes())  # type: ignore[no-any-return]


def run_job(job: ParseJob, settings: WorkerSettings, guard: str) -> Reply:
    """Parse one job; every failure becomes a reply, none escapes to kill the loop."""
    # Temp files a parser makes (docstrange's OCR writes page images) land in the
    # request's private dir, which the server deletes whatever happens here.
    tempfile.tempdir = os.path.dirname(job.path)
    try:
        if job.fault and settings.fault_injection:
            from . import faults

            return ("ok", faults.act(job, guard))
        from . import dispatch

        return ("ok", dispatch.parse(job, settings.model_dir))
    except MemoryError:
        return _out_of_memory(settings)
    except DocumentRejected as exc:
        if _caused_by_memory(exc):  # docstrange wraps it in its ConversionError
            return _out_of_memory(settings)
        return ("rejected", exc.field, exc.message)
    except OcrModelsMissing as exc:
        return ("ocr_missing", str(exc))
    except Exception as exc:  # noqa: BLE001 - reported to the server as INTERNAL
        if _caused_by_memory(exc):
            return _out_of_memory(settings)
        log.error(
            "request %s: parsing a %s failed:\n%s",
            job.request_id or "-",
            job.doc_type,
            traceback.format_exc(),
        )
        return ("internal", f"{type(exc).__name__}: {exc}")
    finally:
        tempfile.tempdir = None


def _out_of_memory(settings: WorkerSettings) -> Reply:
    """The address-space cap (sandbox.limit_memory) stopped an allocation."""
    gc.collect()
    return ("memory", settings.memory_limit_bytes)


def _caused_by_memory(exc: BaseException) -> bool:
    """Whether a MemoryError lies anywhere in ``exc``'s cause / context chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MemoryError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
