"""The real server process (``python -m zopilot_server``) started from a test: on a free
port, its log read until a line appears. Used by the tests of every folder that need
the process rather than an in-process server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_process(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "zopilot_server", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
    )


def read_until(process: subprocess.Popen[str], pattern: str, timeout: float = 120) -> str:
    """Read the process log until ``pattern`` appears; return the log so far."""
    log: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        log.append(line)
        if re.search(pattern, line):
            return "".join(log)
    process.kill()
    raise AssertionError(f"{pattern!r} not seen in log:\n{''.join(log)}")


def start_tiny_process(
    tiny_model_dir: Path, model_cache_dir: Path, *args: str
) -> tuple[subprocess.Popen[str], int, str]:
    """The real server process on the tiny model, on a free port, once it is SERVING:
    the process, its port and its log so far (the caller kills it if it must)."""
    env = {"ZOPILOT_MODEL": str(tiny_model_dir), "ZOPILOT_CACHE_DIR": str(model_cache_dir)}
    process = start_process("--port", "0", *args, env_extra=env)
    log = read_until(process, r"ready: health SERVING")
    port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", log).group(1))
    return process, port, log


@contextmanager
def slow_server(
    tmp_path: Path, tiny_model_dir: Path, model_cache_dir: Path, *flags: str, batch: int = 4
) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """The real server process (tests/slow_step_server.py) whose steps take as long as
    the number written into the yielded file says; ``batch`` rows at most."""
    flag = tmp_path / "step-seconds"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "ZOPILOT_MODEL": str(tiny_model_dir),
        "ZOPILOT_CACHE_DIR": str(model_cache_dir),
    }
    script = str(REPO / "tests" / "slow_step_server.py")
    args = ["--port", "0", "--max-batch-size", str(batch), "--no-doc-prestart", *flags]
    process = subprocess.Popen(
        [sys.executable, script, str(flag), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        log = read_until(process, r"ready: health SERVING")
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", log).group(1))
        yield process, port, flag
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
