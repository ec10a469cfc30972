"""Carrying Chunks from the scheduler thread to the event loop, coalescing under load.

A per-token ``call_soon_threadsafe`` wakes the event loop once per token, and each wake
costs Python work that competes for the GIL with the scheduler thread itself (for small
models most of a decoding step is Python). The channel wakes the loop only when it goes
from empty to non-empty; whatever piled up meanwhile is merged into one Chunk, so a
reader that keeps up still gets one chunk per token, and one that falls behind catches
up in a single message instead of slowing generation down further.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque

from ...loop_bridge import settle_threadsafe
from ..domain import Chunk


def merge(chunks: list[Chunk]) -> Chunk:
    """One Chunk equivalent to ``chunks`` in order (only the last may be the final one)."""
    if len(chunks) == 1:
        return chunks[0]
    return Chunk(
        text="".join(c.text for c in chunks),
        tokens=tuple(t for c in chunks for t in c.tokens),
        completion=chunks[-1].completion,
    )


class ChunkChannel:
    """Thread-safe producer side (``put``), asyncio consumer side (``get``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[object] = deque()
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._wake_pending = False

    def put(self, item: object) -> None:
        """Called from the scheduler thread: a Chunk, or an exception to raise in the reader."""
        with self._lock:
            self._items.append(item)
            if self._wake_pending:
                return
            self._wake_pending = True
        # RuntimeError: the loop is closed, the server is gone and nobody is listening.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._ready.set)

    async def get(self) -> Chunk:
        """The next Chunk: everything that arrived since the last call, merged.

        An exception that arrived after some chunks is raised on the following call, so
        the text generated before a failure is still delivered first.
        """
        await self._ready.wait()
        with self._lock:
            chunks: list[Chunk] = []
            while self._items and isinstance(self._items[0], Chunk):
                chunks.append(self._items.popleft())  # type: ignore[arg-type]
            if not chunks:  # an exception is first in line
                error = self._items.popleft()
            if not self._items:
                self._ready.clear()
                self._wake_pending = False
        if not chunks:
            assert isinstance(error, BaseException)
            raise error
        return merge(chunks)


class ResultCollector:
    """For unary Generate: gathers every Chunk in the scheduler thread and wakes the event
    loop once, at the end. Waking it per token would only make the loop compete with the
    generate thread for the GIL, to collect text nobody sees before the end anyway."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._chunks: list[Chunk] = []
        self._done: asyncio.Future[Chunk] = loop.create_future()

    def put(self, item: object) -> None:
        """Called from the scheduler thread: a Chunk, or an exception ending the generation."""
        if isinstance(item, Chunk):
            self._chunks.append(item)
            if item.completion is None:
                return
            settle_threadsafe(self._loop, self._done, merge(self._chunks), None)
        else:
            assert isinstance(item, BaseException)
            settle_threadsafe(self._loop, self._done, None, item)

    async def result(self) -> Chunk:
        """The whole generation as one Chunk (its ``completion`` set)."""
        return await self._done
