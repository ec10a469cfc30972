"""The RPC chain (rpc_chain.py) on every handler shape, over a real grpc.aio server.

Five methods of a test service, one per shape the server can meet (unary or stream
requests x unary or stream responses, a stream answered by an async generator or by
``context.write``), each run through the chain with a recording link, MalformedRequests
and ErrorMapping: the links run outermost first, see every response, and errors and
malformed bytes get the same statuses whatever the shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from zopilot_server.generation.domain import QueueFull
from zopilot_server.rpc_chain import Behavior, Call, Chain, ErrorMapping, Link, MalformedRequests

SERVICE = "test.Shapes"


def parse(data: bytes) -> bytes:
    if data == b"bad":
        raise ValueError("not a message")
    return data


class Recorder(Link):
    """Logs the calls it wraps and the responses passing through it."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def wrap(self, call: Call, inner: Behavior) -> Behavior:
        shape = (
            ("stream" if call.request_streaming else "unary")
            + "-"
            + ("stream" if call.response_streaming else "unary")
        )

        async def recorded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            self.log.append(f"{self.name} enter {call.method.rsplit('/', 1)[-1]} {shape}")
            try:
                async for response in inner(request, context):
                    self.log.append(f"{self.name} saw {response!r}")
                    yield response
            finally:
                self.log.append(f"{self.name} exit")

        return recorded


async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"full":
        raise QueueFull(3, retry_after_s=0.5)
    return request.upper()


async def generator(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for i in range(3):
        yield b"%d" % i
    if request == b"bug":
        raise RuntimeError("a bug")


async def writer(request: bytes, context: grpc.aio.ServicerContext) -> None:
    await context.write(b"w1")
    await context.write(b"w2")


async def sums(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return b"%d" % sum([len(r) async for r in requests])


async def echo(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary, request_deserializer=parse),
    "Generator": grpc.unary_stream_rpc_method_handler(generator, request_deserializer=parse),
    "Writer": grpc.unary_stream_rpc_method_handler(writer, request_deserializer=parse),
    "Sums": grpc.stream_unary_rpc_method_handler(sums, request_deserializer=parse),
    "Echo": grpc.stream_stream_rpc_method_handler(echo, request_deserializer=parse),
}


async def exercise(log: list[str]) -> dict[str, Any]:
    chain = Chain(
        [Recorder("outer", log), MalformedRequests(), Recorder("inner", log), ErrorMapping()]
    )
    server = grpc.aio.server(interceptors=[chain])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, HANDLERS),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    out: dict[str, Any] = {}

    async def status(call: Any) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            result = call()
            if hasattr(result, "__aiter__"):
                async for _ in result:
                    pass
            else:
                await result
        return info.value.code(), info.value.details() or ""

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:

            def method(name: str, kind: str) -> Any:
                return getattr(channel, kind)(f"/{SERVICE}/{name}")

            out["unary"] = await method("Unary", "unary_unary")(b"hi")
            out["generator"] = [r async for r in method("Generator", "unary_stream")(b"x")]
            out["writer"] = [r async for r in method("Writer", "unary_stream")(b"x")]
            out["sums"] = await method("Sums", "stream_unary")(iter([b"ab", b"cde"]))
            out["echo"] = [r async for r in method("Echo", "stream_stream")(iter([b"1", b"2"]))]
            out["full"] = await status(lambda: method("Unary", "unary_unary")(b"full"))
            out["bug"] = await status(lambda: method("Generator", "unary_stream")(b"bug"))
            out["malformed"] = [
                await status(lambda n=n, k=k, r=r: method(n, k)(r))
                for n, k, r in (
                    ("Unary", "unary_unary", b"bad"),
                    ("Generator", "unary_stream", b"bad"),
                    ("Writer", "unary_stream", b"bad"),
                    ("Sums", "stream_unary", iter([b"ok", b"bad"])),
                    ("Echo", "stream_stream", iter([b"bad"])),
                )
            ]
            out["unknown"] = await status(lambda: method("Nope", "unary_unary")(b"x"))
    finally:
        await server.stop(0)
    return out


def test_every_shape_runs_through_the_links_in_order(caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []
    out = asyncio.run(exercise(log))
    assert out["unary"] == b"HI"
    assert out["generator"] == [b"0", b"1", b"2"]
    assert out["writer"] == [b"w1", b"w2"]
    assert out["sums"] == b"5"
    assert out["echo"] == [b"1", b"2"]
    # Outermost first in, last out; each link sees each response.
    first = log[: log.index("outer exit") + 1]
    assert first == [
        "outer enter Unary unary-unary",
        "inner enter Unary unary-unary",
        "inner saw b'HI'",
        "outer saw b'HI'",
        "inner exit",
        "outer exit",
    ]
    # A handler that answers with context.write sends its responses itself: the links
    # wrap the call (enter, exit, errors) but do not see each response.
    assert "inner enter Writer unary-stream" in log and "outer saw b'w2'" not in log
    assert "inner enter Sums stream-unary" in log and "inner enter Echo stream-stream" in log
    # Domain errors get their status by the error table, bugs INTERNAL, in every shape.
    assert out["full"][0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert out["bug"][0] == grpc.StatusCode.INTERNAL and "a bug" not in out["bug"][1]
    assert "internal error" in caplog.text  # logged in full on the server side
    # Malformed bytes: INVALID_ARGUMENT on every shape, and the inner link never runs.
    assert [code for code, _ in out["malformed"]] == [grpc.StatusCode.INVALID_ARGUMENT] * 5
    # Past the outer link, a unary request that did not parse never reaches the inner one
    # (a stream is judged message by message, inside): 13 calls in all, 3 stopped there.
    entered = [line.split(" ")[0] for line in log if " enter " in line]
    assert (entered.count("outer"), entered.count("inner")) == (13, 10)
    assert out["unknown"][0] == grpc.StatusCode.UNIMPLEMENTED
