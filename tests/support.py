"""Test helpers: an in-process server on 127.0.0.1:0, rich-status readers, an engine spy,
fake gRPC servers for the client tests, and the tiny model builder."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from zopilot_client.pb import generation_pb2, generation_pb2_grpc
from zopilot_server.app import ModelLoader, RunningServer, start_server
from zopilot_server.config import ServerConfig
from zopilot_server.generation.domain import Chunk, FinishReason
from zopilot_server.generation.loading.model_loader import load_model

READY_TIMEOUT_S = 120
MIB = 1024 * 1024

DetailT = TypeVar("DetailT", bound=Message)

# The repository root; the test folders import it from here (tests/ is on sys.path).
REPO = Path(__file__).resolve().parents[1]


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


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """The gRPC error ``call`` raises (the test fails if it raises none)."""
    import pytest

    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def rich_status(error: grpc.RpcError) -> Any:
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status details on {error.code()}: {error.details()}"
    return status


def rich_detail(error: grpc.RpcError, detail_type: type[DetailT]) -> DetailT:
    """The first google.rpc detail of ``detail_type`` in ``error``'s status trailer."""
    for detail in rich_status(error).details:
        if detail.Is(detail_type.DESCRIPTOR):
            message = detail_type()
            detail.Unpack(message)
            return message
    raise AssertionError(f"no {detail_type.__name__} detail in {error.code()}: {error.details()}")


def bad_request(error: grpc.RpcError) -> error_details_pb2.BadRequest:
    """The google.rpc.BadRequest detail of an INVALID_ARGUMENT error."""
    return rich_detail(error, error_details_pb2.BadRequest)


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """google.rpc.BadRequest field violations of an INVALID_ARGUMENT error, by field."""
    return {v.field: v.description for v in bad_request(error).field_violations}


def violated_fields(error: grpc.RpcError) -> list[str]:
    """The violated fields in the order the server sent them, repeats kept."""
    return [v.field for v in bad_request(error).field_violations]


def retry_delay_s(error: grpc.RpcError) -> float:
    info = rich_detail(error, error_details_pb2.RetryInfo)
    return info.retry_delay.ToTimedelta().total_seconds()


def assert_generates(stub: generation_pb2_grpc.GenerationStub, tokens: int = 3) -> None:
    """The server answers a fresh request in full: every token asked for, ended by length.

    What "the server keeps serving" means to a user; a response message alone proves
    nothing (it is always truthy and its text is never None).
    """
    request = generation_pb2.GenerateRequest(prompt="hi", max_new_tokens=tokens, ignore_eos=True)
    done = stub.Generate(request, timeout=30)
    assert done.usage.generated_tokens == tokens
    assert done.finish_reason == generation_pb2.FINISH_REASON_LENGTH


def greedy_reference(loaded: Any, request: Any) -> list[int]:
    """transformers' own greedy decoding of a GenerationRequest's prompt (its own cache,
    batch 1, no reuse of anything): what the engine must reproduce token for token."""
    import torch

    ids = torch.tensor([request.input_ids])
    with torch.inference_mode():
        out = loaded.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=request.max_new_tokens,
            min_new_tokens=request.min_new_tokens,
            do_sample=False,
            pad_token_id=loaded.tokenizer.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


def greedy_tokens(model: Any, ids: list[int], n: int) -> list[int]:
    """Exactly ``n`` greedy tokens of ``model`` (EOS held off) after the prompt ``ids``:
    transformers' own decoding, the reference a served row must reproduce."""
    import torch

    prompt = torch.tensor([ids], device=model.device)
    with torch.inference_mode():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=model.generation_config.pad_token_id,
        )
    return out[0, len(ids) :].tolist()


def metric_values(port: int, prefix: str) -> dict[str, float]:
    """The unlabelled value of every ``/metrics`` sample whose name starts with ``prefix``
    (one model, so one sample per name)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        lines = reply.read().decode().splitlines()
    return {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith(prefix)
    }


def free_port() -> int:
    """A port nothing listens on (for "unreachable" and "starts later" tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FinishSpy:
    """Records, per request id, the finish reason the engine ended each generation with.

    A cancelled RPC never shows the client its end; the engine still completes the job
    (with FinishReason.CANCELLED), which is what proves the cancellation reached it.

    With ``hold=True`` the generation of every request stops after its first chunk with
    text (the scheduler thread waits in the sink) until ``release`` is set: a test can
    then act on a generation that cannot finish before it acts, however fast the model or
    slow the machine. ``held`` is set once a generation waits there.
    """

    def __init__(self, *, hold: bool = False) -> None:
        self.reasons: dict[str, FinishReason] = {}
        self._lock = threading.Lock()
        self._hold = hold
        self.held = threading.Event()
        self.release = threading.Event()

    def wrap(self, submit: Callable[..., Any]) -> Callable[..., Any]:
        def spying_submit(request: Any, sink: Callable[[object], None]) -> Any:
            def spying_sink(item: object) -> None:
                if isinstance(item, Chunk) and item.completion is not None:
                    with self._lock:
                        self.reasons[request.request_id] = item.completion.finish_reason
                sink(item)
                if self._hold and isinstance(item, Chunk) and item.text and not self.held.is_set():
                    self.held.set()
                    self.release.wait(60)  # bounded: a failing test must not hang the suite

            return submit(request, spying_sink)

        return spying_submit

    def reason(self, request_id: str, timeout: float = 20.0) -> FinishReason | None:
        wait_until(lambda: request_id in self.reasons, timeout)
        return self.reasons.get(request_id)


@contextmanager
def finish_spy(server: InProcessServer, *, hold: bool = False) -> Iterator[FinishSpy]:
    """Spy on ``server``'s engine for the duration of the block (``hold``: FinishSpy)."""
    engine = server.running.engine
    assert engine is not None
    spy = FinishSpy(hold=hold)
    engine.submit = spy.wrap(engine.submit)  # type: ignore[method-assign]
    try:
        yield spy
    finally:
        spy.release.set()
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

    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cuda_out_of_memory() -> BaseException:
    """The error torch raises when a CUDA allocation fails (raised here on CPU by tests
    that inject faults into a step)."""
    import torch

    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
