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
