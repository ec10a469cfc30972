"""DocumentParser: validated request in, ParseOutcome out, through an isolated worker.

It owns the private scratch folder (one per server, deleted on close): every request
gets its own temp dir inside it, created here and deleted here once the worker is done
with it, killed or dead, so nothing a request wrote outlives it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ...config import ServerConfig
from .. import ocr_models
from ..domain import (
    DocumentRejected,
    OcrModelsMissing,
    ParseJob,
    ParseOutcome,
    ParserClosed,
    ParserOutOfMemory,
    ParseTimeout,
)
from ..worker import faults
from ..worker.sandbox import (
    SCRATCH_PREFIX,
    WorkerSettings,
    claim_scratch_root,
    remove_stale_scratch,
)
from .detection import Detected, detect
from .pool import START_TIMEOUT_S, WorkerDied, WorkerPool
from .validation import DocumentRequest

log = logging.getLogger(__name__)

T = TypeVar("T")
INLINE_MAX_BYTES = 256 * 1024
DEADLINE_SLACK_S = 0.05


class ParserInternalError(Exception):
    """The worker hit a bug (not the document's fault): INTERNAL, logged."""


class DocumentParser:
    """Validates, stages and parses documents in a WorkerPool."""

    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        self._pool: WorkerPool | None = None
        self.scratch_root: Path | None = None
        self._scratch_lock: int | None = None
        # Told when the workers become unable to start (False) or start again (True).
        self.on_health: Callable[[bool], None] = lambda serving: None

    @property
    def pool(self) -> WorkerPool | None:
        return self._pool

    @property
    def requests_dir(self) -> Path:
        assert self.scratch_root is not None
        return self.scratch_root / "requests"

    async def start(self) -> None:
        """Create the scratch folder and the pool (workers start in the background)."""
        config = self._config
        for path in remove_stale_scratch(tempfile.gettempdir()):
            log.info("removed %s, left behind by a server that was killed", path)
        self.scratch_root = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
        self._scratch_lock = claim_scratch_root(str(self.scratch_root))
        self.requests_dir.mkdir()
        settings = WorkerSettings(
            scratch_root=str(self.scratch_root),
            home_dir=str(self.scratch_root / "home"),
            model_dir=str(ocr_models.resolve(config.doc_model_dir)),
            fault_injection=config.doc_fault_injection,
            log_level=config.log_level,
            memory_limit_bytes=config.doc_worker_memory_mib * 1024 * 1024,
        )
        self._pool = WorkerPool(
            settings,
            size=config.doc_workers,
            max_queue=config.doc_max_queue,
            on_health=lambda serving: self.on_health(serving),
        )
        if config.doc_prestart:
            self._pool.prestart()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        if self.scratch_root is not None:
            shutil.rmtree(self.scratch_root, ignore_errors=True)
        if self._scratch_lock is not None:
            os.close(self._scratch_lock)
            self._scratch_lock = None

    async def parse(self, request: DocumentRequest, time_remaining: float | None) -> ParseOutcome:
        """Parse within ``--doc-timeout-s`` and the call's remaining time, if any."""
        pool = self._pool
        if pool is None:
            raise ParserClosed("the document parser is not running")
        detected = await _off_loop_if_large(
            len(request.content), detect, request.filename, request.mime_type, request.content
        )
        request_dir = tempfile.mkdtemp(dir=self.requests_dir)
        path = os.path.join(request_dir, f"document{detected.doc_type.extension}")
        try:
            await _off_loop_if_large(len(detected.content), _write_new, path, detected.content)
            job = self._job(request, detected, path)
            outcome = await self._run(pool, job, time_remaining)
        finally:
            _remove_request_dir(request_dir, path)
        outcome.doc_type = detected.doc_type.name
        outcome.warnings[:0] = detected.warnings
        return outcome

    def _job(self, request: DocumentRequest, detected: Detected, path: str) -> ParseJob:
        return ParseJob(
            path=path,
            doc_type=detected.doc_type.name,
            formats=request.formats,
            json_fields=request.json_fields,
            json_schema=request.json_schema,
            display_name=request.filename or f"document{detected.doc_type.extension}",
            request_id=request.request_id,
            ocr_max_pages=self._config.doc_ocr_max_pages,
            ocr_max_pixels=self._config.doc_ocr_max_pixels,
            xlsx_max_cells=self._config.doc_max_cells,
            parse_attachments=request.parse_attachments,
            fault=faults.requested(request.filename, self._config.doc_fault_injection),
        )

    def _longest_fair_wait(self) -> float:
        """How long a healthy pool can make a request wait for a worker: a worker start,
        then every request ahead in the queue running to its time limit. A longer wait
        means the pool is broken, and without a call deadline the client would hang."""
        config = self._config
        rounds = math.ceil((config.doc_max_queue + config.doc_workers) / config.doc_workers)
        return START_TIMEOUT_S + rounds * config.doc_timeout_s

    async def _run(
        self, pool: WorkerPool, job: ParseJob, time_remaining: float | None
    ) -> ParseOutcome:
        loop = asyncio.get_running_loop()
        limit = self._config.doc_timeout_s
        deadline = None if time_remaining is None else loop.time() + time_remaining
        wait_timeout = self._longest_fair_wait()
        if time_remaining is not None:
            wait_timeout = min(wait_timeout, time_remaining)
        try:
            reply = await pool.run(
                job, parse_timeout=limit, wait_timeout=wait_timeout, deadline=deadline
            )
        except asyncio.TimeoutError:
            raise ParseTimeout(
                "the call's deadline expired while parsing"
                if deadline is not None and loop.time() >= deadline - DEADLINE_SLACK_S
                else f"parsing took longer than {limit:g} s (--doc-timeout-s); the parser "
                "was stopped"
            ) from None
        except WorkerDied as exc:
            if self._pool is None:
                raise ParserClosed("the document parser is shutting down") from exc
            raise DocumentRejected(
                "content",
                f"the parser crashed on this document (worker exit code {exc.exitcode}); "
                "it may be corrupt, too complex, or need more than the parser's memory limit "
                f"of {self._config.doc_worker_memory_mib} MiB (--doc-worker-memory-mib)",
            ) from exc
        if reply[0] == "memory":
            raise ParserOutOfMemory(
                "parsing this document needed more than the parser's memory limit of "
                f"{self._config.doc_worker_memory_mib} MiB (--doc-worker-memory-mib); the "
                "worker was replaced"
            )
        return _unpack(reply)


async def _off_loop_if_large(size: int, function: Callable[..., T], *args: Any) -> T:
    """Run ``function`` in a thread for large documents; small ones are cheaper inline
    (a thread hop costs more than checking or writing a few hundred KiB)."""
    if size > INLINE_MAX_BYTES:
        return await asyncio.to_thread(function, *args)
    return function(*args)


def _write_new(path: str, content: bytes) -> None:
    """Create ``path`` (owner-only) and write ``content``: plain os calls, no file object."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _remove_request_dir(request_dir: str, path: str) -> None:
    """Delete a request's dir: usually it holds just the document (two syscalls, where
    rmtree makes about eight); anything the parser left there goes through rmtree."""
    try:
        os.unlink(path)
        os.rmdir(request_dir)
    except OSError:
        shutil.rmtree(request_dir, ignore_errors=True)


def _unpack(reply: tuple[object, ...]) -> ParseOutcome:
    kind = reply[0]
    if kind == "ok":
        assert isinstance(reply[1], ParseOutcome)
        return reply[1]
    if kind == "rejected":
        raise DocumentRejected(str(reply[1]), str(reply[2]))
    if kind == "ocr_missing":
        raise OcrModelsMissing(str(reply[1]))
    raise ParserInternalError(f"the document parser failed: {reply[1]}")
