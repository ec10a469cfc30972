"""Admission (bounded queue), cancellation and a batch row being freed, via the real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from support import InProcessServer, retry_delay_s, wait_until
from zopilot_client.pb import generation_pb2 as pb
from zopilot_client.pb import generation_pb2_grpc

LONG = pb.GenerateRequest(prompt="Tell me a story", max_new_tokens=2000, ignore_eos=True)


@dataclass
class Admission:
    """A dedicated server, its engine (to observe what a client cannot) and a stub."""

    server: InProcessServer
    engine: Any
    channel: grpc.Channel
    stub: generation_pb2_grpc.GenerationStub

    def start_stream(self, request: pb.GenerateRequest = LONG) -> tuple[Any, pb.GenerateResponse]:
        """Start a stream and wait for its first chunk, so it is known to be running."""
        call = self.stub.GenerateStream(request, timeout=60)
        first = next(call)
        return call, first

    def running_and_queued(self, queued_request: pb.GenerateRequest = LONG) -> tuple[Any, Any]:
        """One stream generating on the batch's only row and one waiting behind it."""
        running, _ = self.start_stream()
        assert self.engine.active_count == 1
        queued = self.stub.GenerateStream(queued_request, timeout=60)
        assert wait_until(lambda: self.engine.queued_count == 1)
        return running, queued

    def idle(self) -> bool:
        return wait_until(lambda: self.engine.active_count == 0 and self.engine.queued_count == 0)


@pytest.fixture
def admission(make_server: Callable[..., InProcessServer]) -> Iterator[Callable[..., Admission]]:
    """``admission(max_batch_size=1, max_queue=4)``: a server with those limits, and a
    channel to it that is closed after the test (unless the test closes it itself)."""
    channels: list[grpc.Channel] = []

    def start(**limits: int) -> Admission:
        server = make_server(**limits)
        channel = server.channel()
        channels.append(channel)
        stub = generation_pb2_grpc.GenerationStub(channel)
        return Admission(server, server.running.engine, channel, stub)

    yield start
    for channel in channels:
        channel.close()


def test_cancelling_a_stream_frees_the_batch_row_and_starts_the_queued_request(admission):
    serving = admission(max_batch_size=1, max_queue=4)
    running, queued_call = serving.running_and_queued(
        pb.GenerateRequest(prompt="queued", max_new_tokens=5, ignore_eos=True)
    )
    seen_waiting = time.monotonic()  # the queued request arrived before this
    time.sleep(0.2)  # so that its wait, below, is clearly more than scheduling noise
    held_for_ms = (time.monotonic() - seen_waiting) * 1000
    running.cancel()
    # the generate thread notices at its next decoding step and picks up the queued job
    queued = list(queued_call)
    assert queued[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert queued[-1].usage.generated_tokens == 5
    # its queue time covers at least the time the running stream held the batch's only row
    # (a causal lower bound: it arrived before ``seen_waiting`` and left after the cancel)
    assert queued[-1].timings.queue_ms >= held_for_ms
    assert serving.idle()
    with pytest.raises(grpc.RpcError) as info:
        list(running)
    assert info.value.code() == grpc.StatusCode.CANCELLED


def test_client_disconnect_cancels_generation(admission):
    serving = admission(max_batch_size=1)
    serving.start_stream()
    assert serving.engine.active_count == 1
    serving.channel.close()  # the client goes away without a word
    assert wait_until(lambda: serving.engine.active_count == 0)


def test_cancelling_a_queued_request_removes_it(admission):
    serving = admission(max_batch_size=1, max_queue=4)
    running, queued = serving.running_and_queued()
    queued.cancel()
    # its queue slot frees at once, while the first request is still generating
    assert wait_until(lambda: serving.engine.queued_count == 0)
    assert serving.engine.active_count == 1
    running.cancel()
    assert wait_until(lambda: serving.engine.active_count == 0)


def test_queue_overflow_is_resource_exhausted_with_retry_info(admission):
    serving = admission(max_batch_size=1, max_queue=1)
    stub = serving.stub
    running, waiting = serving.running_and_queued()
    for call in (stub.Generate, stub.GenerateStream):
        with pytest.raises(grpc.RpcError) as info:
            list(call(LONG, timeout=10)) if call is stub.GenerateStream else call(LONG)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue is full" in info.value.details()
        delay = retry_delay_s(info.value)
        assert delay > 0
        # the same hint for gRPC's own retry policy, which reads only this trailer
        trailers = dict(info.value.trailing_metadata())
        assert int(trailers["grpc-retry-pushback-ms"]) == round(delay * 1000)
    waiting.cancel()
    running.cancel()
    assert wait_until(lambda: serving.engine.active_count == 0)
    # and the server serves again
    done = stub.Generate(pb.GenerateRequest(prompt="again", max_new_tokens=3, ignore_eos=True))
    assert done.usage.generated_tokens == 3


def test_concurrent_generations_share_a_batch_of_two(admission):
    serving = admission(max_batch_size=2, max_queue=0)
    results: list[pb.GenerateResponse] = []
    request = pb.GenerateRequest(prompt="parallel", max_new_tokens=200, ignore_eos=True)
    first, _ = serving.start_stream()
    # with no queue at all, the second request is admitted only because a batch row is free
    second, _ = serving.start_stream(request)
    assert serving.engine.active_count == 2 and serving.engine.queued_count == 0
    thread = threading.Thread(target=lambda: results.append(list(second)))
    thread.start()
    thread.join(60)
    first.cancel()
    assert results, "the second generation did not finish"
    last = results[0][-1]
    assert last.usage.generated_tokens == 200
    assert last.finish_reason == pb.FINISH_REASON_LENGTH
