"""Test helpers: an in-process server on 127.0.0.1:0 with its own event loop thread."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zopilot_server.app import RunningServer, start_server
from zopilot_server.config import ServerConfig

READY_TIMEOUT_S = 120


class InProcessServer:
    """The real grpc.aio server, started in a background thread, ready when constructed.

    Tests talk to it over real loopback gRPC; they may also reach into ``running`` (for
    example the engine's active count) to observe what a client cannot see.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = dataclasses.replace(config, host="127.0.0.1", port=0)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.running: RunningServer = self.call(start_server(self.config))
        self.target = f"127.0.0.1:{self.running.port}"
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
