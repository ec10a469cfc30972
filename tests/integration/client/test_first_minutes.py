"""A newcomer's first minutes: what the CLI and `make help` say when things look odd."""

from __future__ import annotations

import subprocess
import threading

import pytest
from cli_tools import run_cli
from support import REPO, InProcessServer
from zopilot_server.config import ServerConfig
from zopilot_server.generation.loading.model_loader import LoadedModel, load_model


def test_empty_generation_tells_the_user_about_chat(smollm2_server: InProcessServer) -> None:
    # SmolLM2-Instruct ends a raw prompt at once (EOS): stdout stays empty, stderr says why.
    result = run_cli("generate", "What is the capital of France?", target=smollm2_server.target)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
    assert "produced no text" in result.stderr and "--chat" in result.stderr
    # (With --chat the same prompt answers Paris: tests/integration/client/test_cli.py
    # covers chat turns.)


def test_info_rounds_floats(tiny_server: InProcessServer) -> None:
    result = run_cli("info", target=tiny_server.target)
    assert result.returncode == 0, result.stderr
    (line,) = [row for row in result.stdout.splitlines() if row.startswith("load_seconds")]
    value = line.split()[-1]
    assert len(value.partition(".")[2]) <= 3, line


def test_wait_for_ready_waits_for_serving_bounded_by_timeout(tiny_config: ServerConfig) -> None:
    release = threading.Event()

    def slow_loader(config: ServerConfig) -> LoadedModel:
        release.wait(60)
        return load_model(config)

    server = InProcessServer(tiny_config, loader=slow_loader, wait_ready=False)
    try:
        bounded = run_cli("--wait-for-ready", "--timeout", "1", "tokenize", "Hi",
                          target=server.target)  # fmt: skip
        assert bounded.returncode == 3, bounded.stderr
        assert "not SERVING after 1 s" in bounded.stderr
        threading.Timer(1.0, release.set).start()
        waited = run_cli("--wait-for-ready", "--timeout", "60", "tokenize", "Hi",
                         target=server.target)  # fmt: skip
        assert waited.returncode == 0, waited.stderr
        assert "tokens" in waited.stderr
    finally:
        release.set()
        server.wait_ready()
        server.stop()


def test_default_target_is_named_when_nothing_listens() -> None:
    result = run_cli("--no-retry", "--timeout", "5", "info", env={"ZOPILOT_TARGET": ""})
    if "cannot connect" not in result.stderr:
        pytest.skip("something listens on 127.0.0.1:50051 on this machine")
    assert result.returncode == 3, result.stderr
    assert "is the server running at 127.0.0.1:50051?" in result.stderr


def test_make_help_prints_values_not_variables() -> None:
    result = subprocess.run(["make", "help"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "$(" not in result.stdout
    assert "127.0.0.1:50051" in result.stdout and "zopilotgpu:latest" in result.stdout
