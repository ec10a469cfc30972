"""Helpers for the client and CLI tests: observe the server's engine, fake servers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
from support import InProcessServer, wait_until
from zopilot_server.generation.domain import Chunk, FinishReason


def free_port() -> int:
    """A port nothing listens on (for "unreachable" and "starts later" tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FinishSpy:
    """Records, per request id, the finish reason the engine ended each generation with.

    A cancelled RPC never shows the client its end; the engine still completes the job
    (with FinishReason.CANCELLED), which is what proves the cancellation reached it.
    """

    def __init__(self) -> None:
        self.reasons: dict[str, FinishReason] = {}
        self._lock = threading.Lock()

    def wrap(self, submit: Callable[..., Any]) -> Callable[..., Any]:
        def spying_submit(request: Any, sink: Callable[[object], None]) -> Any:
            def spying_sink(item: object) -> None:
                if isinstance(item, Chunk) and item.completion is not None:
                    with self._lock:
                        self.reasons[request.request_id] = item.completion.finish_reason
                sink(item)

            return submit(request, spying_sink)

        return spying_submit

    def reason(self, request_id: str, timeout: float = 20.0) -> FinishReason | None:
        wait_until(lambda: request_id in self.reasons, timeout)
        return self.reasons.get(request_id)


@contextmanager
def finish_spy(server: InProcessServer) -> Iterator[FinishSpy]:
    """Spy on ``server``'s engine for the duration of the block."""
    engine = server.running.engine
    assert engine is not None
    spy = FinishSpy()
    engine.submit = spy.wrap(engine.submit)  # type: ignore[method-assign]
    try:
        yield spy
    finally:
        del engine.submit  # the instance attribute goes; the method shows again


def engine_idle(server: InProcessServer, timeout: float = 20.0) -> bool:
    engine = server.running.engine
    assert engine is not None
    return wait_until(lambda: engine.active_count == 0 and engine.queued_count == 0, timeout)


Behavior = Callable[[Any, grpc.ServicerContext], Any]


class FakeServer:
    """A tiny sync gRPC server whose methods do what a test says (any bytes in and out).

    For what the real server cannot be made to do on demand: a given status code with
    given details, failing the first N attempts, breaking a stream after one message.
    """

    def __init__(self, credentials: grpc.ServerCredentials | None = None, *, port: int = 0) -> None:
        self.unary: dict[str, Behavior] = {}
        self.streams: dict[str, Behavior] = {}
        self.calls: dict[str, int] = {}
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers((self._Handler(self),))
        address = f"127.0.0.1:{port}"
        if credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, credentials)
        self.target = f"127.0.0.1:{self.port}"
        self._server.start()

    class _Handler(grpc.GenericRpcHandler):
        def __init__(self, fake: FakeServer) -> None:
            self.fake = fake

        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            method = details.method
            if method in self.fake.unary:
                return grpc.unary_unary_rpc_method_handler(self.fake._counted(method, False))
            if method in self.fake.streams:
                return grpc.unary_stream_rpc_method_handler(self.fake._counted(method, True))
            return None

    def _counted(self, method: str, stream: bool) -> Behavior:
        behavior = (self.streams if stream else self.unary)[method]

        def run(request: Any, context: grpc.ServicerContext) -> Any:
            self.calls[method] = self.calls.get(method, 0) + 1
            return behavior(request, context)

        return run

    def stop(self) -> None:
        self._server.stop(0)


def abort_with(code: grpc.StatusCode, message: str, *details: Any) -> Behavior:
    """A behavior that fails with ``code`` and google.rpc ``details`` in the trailer."""
    from google.protobuf import any_pb2
    from google.rpc import code_pb2, status_pb2

    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    trailer = (("grpc-status-details-bin", status.SerializeToString()),)

    def behave(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort_with_status(_Status(code, message, trailer))

    return behave


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def serving_health(request: Any, context: grpc.ServicerContext) -> bytes:
    """A Health/Check behavior that answers SERVING."""
    from grpc_health.v1 import health_pb2

    status = health_pb2.HealthCheckResponse.SERVING
    return health_pb2.HealthCheckResponse(status=status).SerializeToString()


@contextmanager
def health_server_later(port: int, delay: float = 0.5) -> Iterator[None]:
    """Start a fake server answering health SERVING on ``port`` after ``delay`` seconds."""
    started: list[FakeServer] = []

    def start() -> None:
        server = FakeServer(port=port)
        server.unary["/grpc.health.v1.Health/Check"] = serving_health
        started.append(server)

    timer = threading.Timer(delay, start)
    timer.start()
    try:
        yield
    finally:
        timer.join()
        for server in started:
            server.stop()
