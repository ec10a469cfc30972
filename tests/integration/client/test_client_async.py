"""The AsyncClient against the real server: the same API as Client, awaited."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import zopilot_client as zc
from support import engine_idle, finish_spy
from zopilot_server.generation.domain import FinishReason as ServerFinish

LONG = {"max_new_tokens": 1500, "ignore_eos": True}


def run_with_client(target: str, body: Callable[[zc.AsyncClient], Awaitable[Any]]) -> Any:
    """Run ``body`` with an AsyncClient made inside a fresh event loop."""

    async def main() -> Any:
        async with zc.AsyncClient(target, timeout=60) as client:
            return await body(client)

    return asyncio.run(main())


def test_unary_methods(tiny_server):
    async def body(client: zc.AsyncClient) -> tuple[Any, ...]:
        return await asyncio.gather(
            client.generate("Hello there", max_new_tokens=4, ignore_eos=True),
            client.tokenize("Hello world"),
            client.model_info(),
            client.health(),
        )

    result, tokens, info, health = run_with_client(tiny_server.target, body)
    assert result.finish_reason is zc.FinishReason.LENGTH and result.usage.generated_tokens == 4
    assert tokens.tokens == ("Hello", "Ġworld")
    assert info.architecture == "LlamaForCausalLM"
    assert health is zc.HealthStatus.SERVING


def test_stream_matches_generate(tiny_server):
    params = {"max_new_tokens": 8, "ignore_eos": True}

    async def body(client: zc.AsyncClient) -> tuple[Any, ...]:
        async with client.generate_stream("Hello there", **params) as stream:
            chunks = [chunk async for chunk in stream]
        return chunks, stream.result, await client.generate("Hello there", **params)

    chunks, streamed, whole = run_with_client(tiny_server.target, body)
    assert chunks[-1].finish_reason is zc.FinishReason.LENGTH
    assert streamed.text == whole.text == "".join(c.text for c in chunks)


def test_errors_are_mapped_like_the_sync_client(tiny_server):
    async def body(client: zc.AsyncClient) -> Any:
        with pytest.raises(zc.InvalidArgument) as caught:
            await client.generate("Hello", max_new_tokens=0)
        with pytest.raises(zc.InvalidArgument):
            async for _ in client.generate_stream("Hello", top_p=2.0):
                pass
        return caught.value

    error = run_with_client(tiny_server.target, body)
    assert [v.field for v in error.field_violations] == ["max_new_tokens"]


@pytest.mark.parametrize("how", ["async_with", "break", "task_cancel"])
def test_leaving_a_stream_early_cancels_generation_on_the_server(tiny_server, how):
    request_id = uuid.uuid4().hex

    async def body(client: zc.AsyncClient) -> ServerFinish | None:
        stream = client.generate_stream("Hello", request_id=request_id, **LONG)
        if how == "async_with":
            async with stream:
                await stream.__anext__()
        elif how == "break":
            async for _ in stream:
                break
            del stream
        else:
            await stream.__anext__()
            task = asyncio.ensure_future(_drain(stream))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        # Checked while the client (and its channel) is still open: closing the channel
        # would cancel the call too and prove nothing about the stream.
        return await asyncio.to_thread(spy.reason, request_id)

    with finish_spy(tiny_server) as spy:
        assert run_with_client(tiny_server.target, body) is ServerFinish.CANCELLED
    assert engine_idle(tiny_server)


async def _drain(stream: zc.AsyncGenerateStream) -> None:
    async for _ in stream:
        pass
