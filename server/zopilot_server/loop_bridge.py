"""Completing an event-loop Future once, whoever gets there first: the loop itself (an fd
watch, a timer) or a worker thread handing over its result."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TypeVar

T = TypeVar("T")


def settle(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    """On the loop: complete ``future`` with ``error`` or ``result``; once done, a no-op.

    Several parties may race to complete the same future (a reply, a timeout, a kill);
    the first wins and the others must not raise InvalidStateError.
    """
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


def settle_threadsafe(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[T],
    result: T | None,
    error: BaseException | None,
) -> None:
    """From any thread: ``settle`` on the loop. After the loop closed (the server is gone
    and nobody is waiting) it does nothing."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle, future, result, error)
