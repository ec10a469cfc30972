"""Handing a result from a worker thread to a Future on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TypeVar

T = TypeVar("T")


def settle_threadsafe(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[T],
    result: T | None,
    error: BaseException | None,
) -> None:
    """From any thread: complete ``future`` with ``error`` or ``result``, once.

    Later calls, and calls after the loop closed (the server is gone and nobody is
    waiting), do nothing.
    """

    def settle() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle)
