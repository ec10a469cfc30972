"""Test helpers: an in-process server on 127.0.0.1:0 with its own event loop thread."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from zopilot_server.app import ModelLoader, RunningServer, start_server
from zopilot_server.config import ServerConfig
from zopilot_server.generation.model_loader import load_model

READY_TIMEOUT_S = 120


class InProcessServer:
    """The real grpc.aio server, started in a background thread, ready when constructed.

    Tests talk to it over real loopback gRPC; they may also reach into ``running`` (for
    example the engine's active count) to observe what a client cannot see.
    """

    def __init__(
        self, config: ServerConfig, *, loader: ModelLoader = load_model, wait_ready: bool = True
    ) -> None:
        self.config = dataclasses.replace(config, host="127.0.0.1", port=0)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.running: RunningServer = self.call(start_server(self.config, loader))
        self.target = f"127.0.0.1:{self.running.port}"
        if wait_ready:
            self.wait_ready()

    def wait_ready(self) -> None:
        self.call(asyncio.wait_for(self._ready_or_failed(), READY_TIMEOUT_S))

    async def _ready_or_failed(self) -> None:
        assert self.running.load_task is not None
        await self.running.load_task  # raises the loader's exception, if any

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run ``coro`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def health(self, service: str = "") -> int:
        with self.channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def stop(self, grace: float = 0.5) -> None:
        try:
            self.call(self.running.stop(grace), timeout=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


def wait_until(
    predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.01
) -> bool:
    """Poll ``predicate`` until true or ``timeout``; return its last value.

    Used for events that happen on the server "soon" (a worker freeing up); the timeout is
    a generous bound for a hang, not a performance assertion.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def rich_status(error: grpc.RpcError) -> Any:
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status details on {error.code()}: {error.details()}"
    return status


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """google.rpc.BadRequest field violations of an INVALID_ARGUMENT error, by field."""
    for detail in rich_status(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    raise AssertionError("no BadRequest detail")


def retry_delay_s(error: grpc.RpcError) -> float:
    for detail in rich_status(error).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo detail")


def build_tiny_llama(tokenizer_dir: Path, out_dir: Path) -> Path:
    """A 2-layer random Llama with SmolLM2's real tokenizer: fast, its text is nonsense."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def load_script(name: str) -> Any:
    """Import ``scripts/<name>.py`` (the scripts folder is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
