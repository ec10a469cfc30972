"""Test-only faults, acted out inside a parser worker. Off unless --doc-fault-injection.

The isolation promises (a hung parser is killed at its deadline, a crashed one is
replaced, the request's temp dir is deleted either way, the network is unreachable)
can only be tested with a parser that misbehaves on demand. With fault injection
enabled (the server checks the flag, and the worker checks it again), a filename
starting with ``zopilot-fault-<name>`` makes the worker act out ``<name>`` instead of
parsing: hang, crash (SIGKILL itself), bug (raise), network (try to connect and report).
Both leave a temp file behind first. It is off by default; its flag says it is for tests.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable

from ..domain import OutputFormat, ParseJob, ParseOutcome

PREFIX = "zopilot-fault-"
FAULTS = ("hang", "crash", "bug", "network")


def requested(filename: str, enabled: bool) -> str:
    """The fault a request's filename asks for ('' when none or when disabled)."""
    if not enabled:
        return ""
    stem = os.path.basename(filename)
    if not stem.startswith(PREFIX):
        return ""
    name = stem[len(PREFIX) :].split(".", 1)[0]
    return name if name in FAULTS else ""


def act(job: ParseJob, guard: str) -> ParseOutcome:
    """Act out ``job.fault``; only ``network`` returns (a report of each attempt)."""
    _leave_scratch_file()
    if job.fault == "hang":
        while True:
            time.sleep(3600)
    if job.fault == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if job.fault == "bug":
        raise RuntimeError("injected parser bug")
    with open(job.path, encoding="utf-8") as handle:
        host, _, port = handle.read().strip().rpartition(":")
    report = [f"guard: {guard}"] + [
        f"{name}: {_attempt(call)}" for name, call in _network_calls(host, int(port))
    ]
    return ParseOutcome(outputs={OutputFormat.MARKDOWN: "\n".join(report)}, method="fault")


def _leave_scratch_file() -> None:
    """A temp file like the ones parsers leave: the server must delete it anyway."""
    with tempfile.NamedTemporaryFile(delete=False, suffix=".fault") as handle:
        handle.write(b"left behind by a faulty parser")


def _network_calls(host: str, port: int) -> list[tuple[str, Callable[[], object]]]:
    def raw_connect() -> object:
        import _socket

        raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        try:
            raw.settimeout(10)
            return raw.connect((host, port))
        finally:
            raw.close()

    return [
        ("tcp", lambda: socket.create_connection((host, port), timeout=10)),
        ("socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
        ("dns", lambda: socket.getaddrinfo("example.com", 443)),
        ("raw", raw_connect),
    ]


def _attempt(call: Callable[[], object]) -> str:
    started = time.monotonic()
    try:
        call()
    except OSError as exc:
        return f"blocked ({type(exc).__name__}: {exc}) after {time.monotonic() - started:.3f}s"
    return f"CONNECTED after {time.monotonic() - started:.3f}s"
