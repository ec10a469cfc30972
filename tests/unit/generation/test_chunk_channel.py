"""ChunkChannel: thread to event loop, merging what piled up, errors after the text."""

from __future__ import annotations

import asyncio
import threading

import pytest
from zopilot_server.generation.domain import Chunk, TokenDetail
from zopilot_server.generation.output.chunk_channel import ChunkChannel


def test_chunks_that_pile_up_are_merged_in_order():
    async def scenario() -> Chunk:
        channel = ChunkChannel(asyncio.get_running_loop())
        for i in range(3):
            channel.put(Chunk(text=f"t{i} ", tokens=(TokenDetail(i, f"t{i}", -0.1),)))
        return await channel.get()

    merged = asyncio.run(scenario())
    assert merged.text == "t0 t1 t2 "
    assert [t.id for t in merged.tokens] == [0, 1, 2]


def test_error_is_raised_after_the_text_that_came_before_it():
    async def scenario() -> tuple[Chunk, BaseException]:
        channel = ChunkChannel(asyncio.get_running_loop())
        channel.put(Chunk(text="partial"))
        channel.put(RuntimeError("generate failed"))
        first = await channel.get()
        with pytest.raises(RuntimeError) as info:
            await channel.get()
        return first, info.value

    first, error = asyncio.run(scenario())
    assert first.text == "partial" and "generate failed" in str(error)


def test_producer_thread_wakes_the_waiting_reader():
    async def scenario() -> list[str]:
        channel = ChunkChannel(asyncio.get_running_loop())

        def produce() -> None:
            for i in range(200):
                channel.put(Chunk(text=str(i % 10)))
            channel.put(Chunk(text="!", completion=object()))  # type: ignore[arg-type]

        threading.Thread(target=produce).start()
        texts = []
        while True:
            chunk = await asyncio.wait_for(channel.get(), 10)
            texts.append(chunk.text)
            if chunk.completion is not None:
                return texts

    texts = asyncio.run(scenario())
    assert "".join(texts) == "".join(str(i % 10) for i in range(200)) + "!"


def test_result_collector_wakes_once_with_everything_merged():
    from zopilot_server.generation.output.chunk_channel import ResultCollector

    async def scenario() -> Chunk:
        collector = ResultCollector(asyncio.get_running_loop())

        def produce() -> None:
            for i in range(50):
                collector.put(Chunk(text=str(i % 10)))
            collector.put(Chunk(text="", completion=object()))  # type: ignore[arg-type]

        threading.Thread(target=produce).start()
        return await asyncio.wait_for(collector.result(), 10)

    result = asyncio.run(scenario())
    assert result.text == "".join(str(i % 10) for i in range(50))
    assert result.completion is not None


def test_result_collector_raises_the_generation_error():
    from zopilot_server.generation.output.chunk_channel import ResultCollector

    async def scenario() -> None:
        collector = ResultCollector(asyncio.get_running_loop())
        collector.put(Chunk(text="x"))
        collector.put(RuntimeError("boom"))
        await asyncio.wait_for(collector.result(), 10)

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(scenario())
