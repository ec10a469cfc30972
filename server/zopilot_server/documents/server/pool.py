"""The server side of the parser workers: a bounded pool of spawned processes.

Why not ProcessPoolExecutor: it cannot kill one hung task (only the whole pool), and
one dead worker breaks every pending future. Here each worker is a process plus a pipe;
a request takes an idle worker, sends it a job and waits, with a timeout, for the pipe
to become readable on the event loop (no thread per document; only a reply over 1 MiB
is read in a thread). A worker that times out, crashes or whose caller is cancelled is killed and
replaced; the others keep serving. At most ``size`` documents are parsed at once and at
most ``max_queue`` requests wait for a worker; beyond that, ParserBusy.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ...loop_bridge import settle
from ..domain import ParseJob, ParserBusy, ParserClosed, ParseTimeout, WorkersCannotStart
from ..worker.main import INLINE, Reply, worker_main
from ..worker.sandbox import WorkerSettings, scrub_server_secrets

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
# While workers cannot start, requests retry a start at most this often (each costs a
# process and a second of CPU; a fixed install is found within this delay).
RESTART_BACKOFF_S = 10.0
JOIN_TIMEOUT_S = 10.0


class WorkerDied(Exception):
    """The worker process ended while parsing (a crash, or killed by the OS)."""

    def __init__(self, exitcode: int | None) -> None:
        super().__init__(f"parser worker died (exit code {exitcode})")
        self.exitcode = exitcode


class _Worker:
    """One worker process and the server's end of its pipe."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.guard = ""
        self._waiter: asyncio.Future[None] | None = None
        self._pending: asyncio.Future[Any] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    async def receive(self, executor: ThreadPoolExecutor, timeout: float) -> Any:
        """The worker's next message (see ``worker.send_message``).

        Small messages are read on the event loop as soon as the pipe is readable, which
        saves a thread handoff per document; large ones are read in a thread so that a
        50 MB spreadsheet never stalls the loop (and the token streams it serves).
        """
        loop = asyncio.get_running_loop()
        try:
            await self._readable(loop, timeout)
            frame = self.conn.recv_bytes()
            if frame[:1] == INLINE:
                return pickle.loads(memoryview(frame)[1:])
            self._pending = loop.run_in_executor(executor, self.conn.recv_bytes)
            return pickle.loads(await asyncio.wait_for(asyncio.shield(self._pending), timeout))
        except asyncio.TimeoutError:
            raise  # (a subclass of OSError since Python 3.11: not a dead worker)
        except (EOFError, OSError) as exc:
            raise WorkerDied(self.process.exitcode) from exc

    async def _readable(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        """Until the pipe is readable (or at EOF); asyncio.TimeoutError after ``timeout``.

        One future woken by the fd watch or by a timer: cheaper than ``wait_for``, which
        wraps the wait in a task of its own on every document before Python 3.12.
        """
        fd = self.conn.fileno()
        self._waiter = loop.create_future()
        waiter = self._waiter
        loop.add_reader(fd, settle, waiter, None, None)
        timer = loop.call_later(timeout, settle, waiter, None, asyncio.TimeoutError())
        try:
            await waiter
        finally:
            timer.cancel()
            loop.remove_reader(fd)
            self._waiter = None

    async def call(self, job: ParseJob, executor: ThreadPoolExecutor, timeout: float) -> Reply:
        self.conn.send_bytes(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL))
        return await self.receive(executor, timeout)

    async def kill(self, executor: ThreadPoolExecutor) -> None:
        """SIGKILL, reap, and close the pipe once nothing reads or watches it any more."""
        if self.process.is_alive():
            self.process.kill()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, self.process.join, JOIN_TIMEOUT_S)
        if self._pending is not None:
            await asyncio.gather(self._pending, return_exceptions=True)
        if self._waiter is not None and not self._waiter.done():
            settle(self._waiter, None, EOFError("worker stopped"))
            await asyncio.sleep(0)  # let the reader remove its fd watch before we close
        self.conn.close()


@dataclass(frozen=True)
class PoolStats:
    """A read-only view of the pool now (metrics gauges, health, tests)."""

    size: int  # most workers the pool runs
    live: int  # worker processes running or starting
    idle: int  # live workers waiting for a job
    busy: int  # workers parsing now
    waiting: int  # calls waiting for a free worker


class WorkerPool:
    """At most ``size`` worker processes; idle ones wait in a queue for the next job."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        size: int,
        max_queue: int,
        on_health: Callable[[bool], None] | None = None,
    ) -> None:
        self._settings = settings
        self._on_health = on_health or (lambda serving: None)
        # Set while no worker lives and the last start failed; waiters watch it.
        self._broken = asyncio.Event()
        self._size = size
        self._max_queue = max_queue
        self._context = multiprocessing.get_context("spawn")
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._workers: set[_Worker] = set()
        self._starting = 0
        self._waiting = 0
        self._busy = 0
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        # One reader thread per worker, plus room for the reaping of killed ones.
        self._executor = ThreadPoolExecutor(max_workers=2 * size + 2, thread_name_prefix="doc")
        self.last_start_error = ""  # why the last worker start failed, if it did
        self._last_start_failure = 0.0  # time.monotonic() of that failure

    @property
    def live(self) -> int:
        return len(self._workers) + self._starting

    @property
    def idle_count(self) -> int:
        return self._idle.qsize()

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid is not None]

    def worker_processes(self) -> list[BaseProcess]:
        """The live workers' processes (for tests that watch them die)."""
        return [w.process for w in self._workers]

    def stats(self) -> PoolStats:
        return PoolStats(
            size=self._size,
            live=self.live,
            idle=self.idle_count,
            busy=self._busy,
            waiting=self._waiting,
        )

    def prestart(self) -> None:
        """Start every worker in the background (first requests then find them warm)."""
        while self.live < self._size:
            self._spawn()

    async def run(
        self,
        job: ParseJob,
        *,
        parse_timeout: float,
        wait_timeout: float,
        deadline: float | None = None,
    ) -> Reply:
        """Parse ``job`` in a worker; kill and replace the worker if anything goes wrong.

        The parse gets ``parse_timeout`` seconds, fewer if the call's ``deadline`` (event
        loop time) comes sooner after the wait for a worker.
        """
        worker = await self._acquire(wait_timeout)
        if deadline is not None:
            parse_timeout = min(parse_timeout, deadline - asyncio.get_running_loop().time())
        self._busy += 1
        try:
            reply = await worker.call(job, self._executor, max(parse_timeout, 0.0))
        except BaseException:
            self._workers.discard(worker)
            await asyncio.shield(self._retire(worker))
            raise
        finally:
            self._busy -= 1
        if reply[0] == "memory":  # the worker exits after this reply: replace it now
            self._workers.discard(worker)
            await asyncio.shield(self._retire(worker))
            return reply
        self._idle.put_nowait(worker)
        return reply

    async def _acquire(self, timeout: float) -> _Worker:
        if self._closed:
            raise ParserClosed("the document parser is shutting down")
        if self._broken.is_set():
            due = time.monotonic() - self._last_start_failure >= RESTART_BACKOFF_S
            if due and self.live < self._size:
                self._spawn()  # try again in the background: the install may be fixed
            raise self._cannot_start()
        if self._busy + self._waiting >= self._size + self._max_queue:
            raise ParserBusy(
                f"all {self._size} parser workers are busy and {self._waiting} requests "
                "are waiting; retry later",
                retry_after_s=1.0,
            )
        while self._waiting == 0 and not self._idle.empty():
            # The common case: a worker is idle and nobody queues ahead of us.
            worker = self._idle.get_nowait()
            if await self._alive_or_retired(worker):
                return worker
        if self._idle.empty() and self.live < self._size:
            self._spawn()
        self._waiting += 1
        started = time.monotonic()
        # Not asyncio.wait_for: before Python 3.12 it can drop a worker that arrives just
        # as the timeout fires, and the pool would shrink for good.
        getter = asyncio.ensure_future(self._next_live_worker())
        broken = asyncio.ensure_future(self._broken.wait())
        try:
            done, _ = await asyncio.wait(
                {getter, broken}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._waiting -= 1
            broken.cancel()
            if not getter.done():
                getter.cancel()
                await asyncio.gather(getter, return_exceptions=True)
                if not getter.cancelled() and getter.exception() is None:
                    self._idle.put_nowait(getter.result())  # it arrived after all
        if getter not in done and broken in done:
            raise self._cannot_start()
        if not done:
            broken_note = f"; the last worker start failed: {self.last_start_error}"
            raise ParseTimeout(
                f"no parser worker became free within {time.monotonic() - started:.1f} s"
                + (broken_note if self.last_start_error else "")
            )
        return getter.result()

    def _cannot_start(self) -> WorkersCannotStart:
        return WorkersCannotStart(
            f"the document parser cannot start its workers ({self.last_start_error}); "
            "check the server log and the docstrange installation"
        )

    async def _next_live_worker(self) -> _Worker:
        """An idle worker that is still alive (one may have died while idle: replace it)."""
        while True:
            worker = await self._idle.get()
            if await self._alive_or_retired(worker):
                return worker

    async def _alive_or_retired(self, worker: _Worker) -> bool:
        """True if ``worker`` (just taken idle) still lives; else drop it, start another."""
        if worker.process.is_alive():
            return True
        self._workers.discard(worker)
        await self._retire(worker)
        return False

    def _spawn(self) -> None:
        self._starting += 1
        task = asyncio.get_running_loop().create_task(self._start_worker())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_worker(self) -> None:
        worker: _Worker | None = None
        try:
            worker = await self._launch()
            hello = await worker.receive(self._executor, START_TIMEOUT_S)
            if hello[0] != "ready":
                raise WorkersCannotStart(str(hello[2]))
            worker.guard = hello[2]
        except BaseException as exc:
            if worker is not None:
                worker.process.kill()
                await asyncio.shield(worker.kill(self._executor))
            if not isinstance(exc, Exception):
                raise  # cancelled by close()
            log.error("a document parser worker failed to start: %s", exc)
            cannot = isinstance(exc, WorkersCannotStart)
            self.last_start_error = str(exc) if cannot else f"{type(exc).__name__}: {exc}"
            self._last_start_failure = time.monotonic()
            if not self._workers and not self._broken.is_set():
                self._broken.set()
                self._on_health(False)
            return
        finally:
            self._starting -= 1
        if self._closed:
            await self._retire(worker)
            return
        self.last_start_error = ""
        if self._broken.is_set():
            self._broken.clear()
            self._on_health(True)
        self._workers.add(worker)
        self._idle.put_nowait(worker)
        log.info("document parser worker %s ready (network: %s)", worker.pid, worker.guard)

    async def _launch(self) -> _Worker:
        scrub_server_secrets(os.environ)  # before the spawn copies our environment
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker_main,
            args=(child_end, self._settings),
            name="zopilot-docworker",
            daemon=True,
        )
        start = asyncio.get_running_loop().run_in_executor(self._executor, process.start)
        try:
            await asyncio.shield(start)
        except asyncio.CancelledError:
            # close() cancelled us mid-spawn, but the spawn goes on in its thread: let it
            # finish and stop the child, or the process could exit while the child still
            # reads its start data (EOFError and a traceback from the child).
            await start
            child_end.close()
            await _Worker(process, parent_end).kill(self._executor)
            raise
        child_end.close()  # or the worker's death would never reach us as EOF
        return _Worker(process, parent_end)

    async def _retire(self, worker: _Worker) -> None:
        """Kill a worker that misbehaved (or was cancelled mid-job); start a replacement."""
        await worker.kill(self._executor)
        log.warning(
            "document parser worker %s stopped (exit code %s)",
            worker.pid,
            worker.process.exitcode,
        )
        if not self._closed and self.live < self._size:
            self._spawn()

    async def close(self) -> None:
        """Stop every worker; requests still waiting get ParserClosed or a WorkerDied."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        workers, self._workers = list(self._workers), set()
        await asyncio.gather(*(w.kill(self._executor) for w in workers), return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
