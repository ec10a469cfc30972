"""``--send-timeout-s``: a stream whose client stopped reading is ended, not held.

grpc.aio suspends a streaming handler at each ``yield`` until its message is handed to
the transport, and the transport holds it while the client's HTTP/2 flow-control window
is 0. A client that never reads (nor goes away) would so keep its stream, its handler
and, until max_new_tokens, its row of the batch, with the output piling up behind it.
Each yield is therefore timed: one that is not taken within the limit cancels the
handler's task; the stream ends CANCELLED (RST_STREAM) and leaving the generator cancels
the job, which takes the row out of the batch within one step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def sent_within(seconds: float, request_id: str) -> Iterator[None]:
    """Wrap a streaming handler's ``yield``: cancel the handler if the message has not
    left within ``seconds`` (0: no limit)."""
    if seconds <= 0:
        yield
        return
    task = asyncio.current_task()
    assert task is not None

    def give_up() -> None:
        log.info("request %s: client took no data for %.0f s; cancelled", request_id, seconds)
        task.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, give_up)
    try:
        yield
    finally:
        timer.cancel()
