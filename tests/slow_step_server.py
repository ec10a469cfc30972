"""The real server process with each model step made slow on demand (drain tests).

``python tests/slow_step_server.py FLAG_FILE [server flags]``: while FLAG_FILE holds a
number S, every model step first holds the GIL for a tenth of S (as a busy
Python step would) and then sleeps the rest; without the file steps run at full speed.
A machine so loaded that one step outlasts the shutdown grace, made on demand."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zopilot_server.__main__ import run
from zopilot_server.generation.model import runner


def _slowed(flag: Path, step: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(step)
    def slow_step(*args: Any, **kwargs: Any) -> Any:
        try:
            seconds = float(flag.read_text())
        except (OSError, ValueError):
            seconds = 0.0
        busy_until = time.perf_counter() + seconds / 10
        while time.perf_counter() < busy_until:
            pass
        time.sleep(seconds * 0.9)
        return step(*args, **kwargs)

    return slow_step


def main() -> None:
    flag = Path(sys.argv.pop(1))
    runner.ModelRunner.step = _slowed(flag, runner.ModelRunner.step)
    run()


if __name__ == "__main__":
    main()
