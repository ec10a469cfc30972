"""The API contract outside Python: a Node client that loads protos/ with
@grpc/proto-loader (no generated code, none of our stubs) streams from the real server
and gets what the Python client gets. `make install` installs it (tests/node, npm ci)."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
import zopilot_client as zc
from support import REPO, InProcessServer

NODE_DIR = REPO / "tests" / "node"
NODE = shutil.which("node")


def node_generate(target: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Run the Node client once; its exit status and the JSON line it printed."""
    assert NODE, "the Node client test needs Node >= 18 (see `make install`)"
    assert (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run `make install`"
    result = subprocess.run(
        [NODE, str(NODE_DIR / "generate_stream.js"), target, json.dumps(request), "30"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip(), result.stderr
    return result.returncode, json.loads(result.stdout)


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("prompt", ["Hello there", CHAT], ids=["prompt", "messages"])
def test_node_stream_equals_the_python_stream(
    tiny_server: InProcessServer, prompt: str | list[dict[str, str]]
) -> None:
    params = {"max_new_tokens": 12, "ignore_eos": True}
    with (
        zc.Client(tiny_server.target, timeout=60) as client,
        client.generate_stream(prompt, **params) as stream,
    ):
        python_chunks = list(stream)
    field = {"prompt": prompt} if isinstance(prompt, str) else {"messages": prompt}
    code, node = node_generate(tiny_server.target, {**field, **params, "request_id": "node-1"})
    assert code == 0, node
    assert stream.result is not None and stream.result.finish_reason is zc.FinishReason.LENGTH
    assert node["text"] == stream.text  # greedy: the same text, byte for byte
    assert node["text"]  # the tiny model emits text (for the chat: newlines) here
    assert node["finish_reason"] == "FINISH_REASON_LENGTH"
    assert node["generated_tokens"] == 12
    # Streamed, not one message (how deltas group into chunks is not part of the contract).
    assert node["chunks"] > 2 and len(python_chunks) > 2
    assert node["request_id"] == "node-1"


def test_node_sees_invalid_argument_with_rich_details(tiny_server: InProcessServer) -> None:
    code, node = node_generate(tiny_server.target, {"prompt": "x", "max_new_tokens": 5000})
    assert code == 2, node
    assert node["code"] == 3  # INVALID_ARGUMENT
    assert "max_new_tokens" in node["details"]
    assert node["has_status_details"]  # google.rpc.BadRequest travels in the trailer
