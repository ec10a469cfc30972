"""A server killed with SIGKILL leaves its parser scratch folder behind; the next start
removes it, and only it: never a live server's folder, never anything else in TMPDIR."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from server_processes import read_until, start_process

PREFIX = "zopilot-docs-"


def scratch_dirs(tmp: Path) -> set[Path]:
    return set(tmp.glob(PREFIX + "*"))


def test_a_start_removes_what_a_killed_server_left(tiny_model_dir, model_cache_dir, tmp_path):
    env = {
        "TMPDIR": str(tmp_path),
        "ZOPILOT_MODEL": str(tiny_model_dir),
        "ZOPILOT_CACHE_DIR": str(model_cache_dir),
        "ZOPILOT_DOC_PRESTART": "false",
    }
    unrelated = tmp_path / f"{PREFIX}not-a-dir"
    unrelated.write_text("a file with our prefix is not ours to delete")
    other = tmp_path / "someone-elses"
    other.mkdir()
    processes = []
    try:
        alive = start_process("--port", "0", env_extra=env)
        processes.append(alive)
        read_until(alive, r"ready: health SERVING")
        (alive_dir,) = scratch_dirs(tmp_path) - {unrelated}

        killed = start_process("--port", "0", env_extra=env)
        processes.append(killed)
        read_until(killed, r"ready: health SERVING")
        (killed_dir,) = scratch_dirs(tmp_path) - {unrelated, alive_dir}
        (killed_dir / "requests" / "left-behind.bin").write_bytes(b"x" * 1024)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(10)
        assert killed_dir.exists()  # SIGKILL runs no cleanup

        restarted = start_process("--port", "0", env_extra=env)
        processes.append(restarted)
        log = read_until(restarted, r"ready: health SERVING")
        assert f"removed {killed_dir}, left behind by a server that was killed" in log
        assert not killed_dir.exists()
        assert alive_dir.exists(), "a live server's folder was removed"
        assert unrelated.exists() and other.exists()
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
