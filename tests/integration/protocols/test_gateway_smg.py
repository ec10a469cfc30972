"""The real smg gateway (PyPI ``smg``, pinned) in front of two real server processes on
127.0.0.1, driven with the OpenAI Python client: chat completions streamed and not
answer "Paris" on SmolLM2, and with one replica stopped the next requests go to the
other. smg fetches the tokenizer and chat template from the workers (GetTokenizer)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import free_port

SMG = shutil.which("smg", path=str(Path(sys.executable).parent))
MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# Small slots: two replicas and the gateway share the test machine.
SERVER_FLAGS = ("--protocols", "vllm", "--max-batch-size", "2", "--kv-slot-tokens", "1024")


def _replica(port: int, cache_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "zopilot_server", "--host", "127.0.0.1", "--port", str(port),
         "--cache-dir", str(cache_dir), *SERVER_FLAGS],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=os.environ.copy(),
    )  # fmt: skip


@pytest.fixture(scope="module")
def gateway(
    model_cache_dir: Path, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    assert SMG, "smg is installed by `make install` (requirements-dev.txt)"
    logs = tmp_path_factory.mktemp("gateway")
    ports = [free_port(), free_port()]
    replicas = [_replica(p, model_cache_dir, logs / f"replica{p}.log") for p in ports]
    # smg starts once both serve: a probe that meets a loading replica (healthy false)
    # counts as a failure, and one failure marks a worker down here (quick failover).
    deadline = time.monotonic() + 240
    for port, replica in zip(ports, replicas, strict=True):
        log = logs / f"replica{port}.log"
        while "ready: health SERVING" not in log.read_text(errors="replace"):
            assert replica.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
    http = free_port()
    smg = subprocess.Popen(
        [SMG, "launch", "--backend", "vllm", "--policy", "round_robin",
         "--worker-urls", *(f"grpc://127.0.0.1:{p}" for p in ports),
         "--host", "127.0.0.1", "--port", str(http), "--log-level", "warn",
         "--worker-startup-timeout-secs", "180", "--health-check-interval-secs", "1",
         "--health-failure-threshold", "1", "--retry-max-retries", "3"],
        stdout=(logs / "smg.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{http}/v1", api_key="unused", timeout=120)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                models = [m.id for m in client.models.list().data]
                if MODEL in models and _ready_workers(http) == 2:
                    break
            except openai.APIError:
                pass
            assert time.monotonic() < deadline, (logs / "smg.log").read_text()[-3000:]
            assert smg.poll() is None, (logs / "smg.log").read_text()[-3000:]
            time.sleep(1)
        yield {"client": client, "replicas": replicas, "ports": ports, "logs": logs}
    finally:
        for process in (smg, *replicas):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (smg, *replicas):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _ready_workers(http: int) -> int:
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{http}/workers", timeout=5) as reply:
        body = json.loads(reply.read())
    workers = body.get("workers", body) if isinstance(body, dict) else body
    return sum(1 for w in workers if w.get("is_healthy", True))


def ask(client: Any, *, stream: bool) -> str:
    if not stream:
        reply = client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=16, temperature=0
        )
        assert reply.choices[0].finish_reason == "stop"
        return reply.choices[0].message.content
    events = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=16, temperature=0, stream=True
    )
    parts = [e.choices[0].delta.content or "" for e in events if e.choices]
    assert len([p for p in parts if p]) > 1, parts  # streamed, not one block
    return "".join(parts)


def test_chat_completion_through_the_gateway(gateway: dict[str, Any]) -> None:
    client = gateway["client"]
    assert "Paris" in ask(client, stream=False)
    assert "Paris" in ask(client, stream=True)


def test_the_docs_openai_snippet_streams_an_answer_through_the_gateway(
    gateway: dict[str, Any],
) -> None:
    """docs/gateway.md's python block, run as written against this gateway's address."""
    import re

    from support import REPO

    page = (REPO / "docs" / "gateway.md").read_text()
    code = re.search(r"<!-- snippet: gateway-openai -->\n```python\n(.*?)^```$", page, re.S | re.M)
    assert code, "docs/gateway.md lost its gateway-openai snippet"
    base_url = str(gateway["client"].base_url).rstrip("/")
    assert "http://127.0.0.1:8080/v1" in code[1]
    result = subprocess.run(
        [sys.executable, "-c", code[1].replace("http://127.0.0.1:8080/v1", base_url)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Paris" in result.stdout


def test_a_stopped_replica_leaves_the_other_serving(gateway: dict[str, Any]) -> None:
    client = gateway["client"]
    for _ in range(2):  # round robin: both replicas answered
        assert "Paris" in ask(client, stream=False)
    stopped = gateway["replicas"][0]
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=60) == 0  # drained and exited cleanly
    answers = [ask(client, stream=i % 2 == 0) for i in range(4)]
    assert all("Paris" in a for a in answers), answers
    survivor = gateway["logs"] / f"replica{gateway['ports'][1]}.log"
    assert survivor.read_text().count("EOS_TOKEN") >= 4
