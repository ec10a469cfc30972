"""Admission (bounded queue), cancellation and the worker being freed, via the real server."""

from __future__ import annotations

import threading

import grpc
import pytest
from support import retry_delay_s, wait_until
from zopilot_client.pb import generation_pb2 as pb
from zopilot_client.pb import generation_pb2_grpc

LONG = pb.GenerateRequest(prompt="Tell me a story", max_new_tokens=2000, ignore_eos=True)


def stub_for(server) -> tuple[grpc.Channel, generation_pb2_grpc.GenerationStub]:
    channel = server.channel()
    return channel, generation_pb2_grpc.GenerationStub(channel)


def start_stream(stub, request=LONG):
    """Start a stream and wait for its first chunk, so it is known to be running."""
    call = stub.GenerateStream(request, timeout=60)
    first = next(call)
    return call, first


def running_and_queued(stub, engine, queued_request=LONG):
    """One stream generating on the only worker and one waiting behind it."""
    running, _ = start_stream(stub)
    assert engine.active_count == 1
    queued = stub.GenerateStream(queued_request, timeout=60)
    assert wait_until(lambda: engine.queued_count == 1)
    return running, queued


def test_cancelling_a_stream_frees_the_worker_and_starts_the_queued_request(make_server):
    server = make_server(max_batch_size=1, max_queue=4)
    engine = server.running.engine
    channel, stub = stub_for(server)
    with channel:
        running, queued_call = running_and_queued(
            stub, engine, pb.GenerateRequest(prompt="queued", max_new_tokens=5, ignore_eos=True)
        )

        running.cancel()
        # the generate thread notices at its next decoding step and picks up the queued job
        queued = list(queued_call)
        assert queued[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert queued[-1].timings.queue_ms > 0
        assert wait_until(lambda: engine.active_count == 0 and engine.queued_count == 0)
        with pytest.raises(grpc.RpcError) as info:
            list(running)
        assert info.value.code() == grpc.StatusCode.CANCELLED


def test_client_disconnect_cancels_generation(make_server):
    server = make_server(max_batch_size=1)
    engine = server.running.engine
    channel, stub = stub_for(server)
    start_stream(stub)
    assert engine.active_count == 1
    channel.close()  # the client goes away without a word
    assert wait_until(lambda: engine.active_count == 0)


def test_cancelling_a_queued_request_removes_it(make_server):
    server = make_server(max_batch_size=1, max_queue=4)
    engine = server.running.engine
    channel, stub = stub_for(server)
    with channel:
        running, queued = running_and_queued(stub, engine)
        queued.cancel()
        # its queue slot frees at once, while the first request is still generating
        assert wait_until(lambda: engine.queued_count == 0)
        assert engine.active_count == 1
        running.cancel()
        assert wait_until(lambda: engine.active_count == 0)


def test_queue_overflow_is_resource_exhausted_with_retry_info(make_server):
    server = make_server(max_batch_size=1, max_queue=1)
    engine = server.running.engine
    channel, stub = stub_for(server)
    with channel:
        running, waiting = running_and_queued(stub, engine)
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
        assert wait_until(lambda: engine.active_count == 0)
        # and the server serves again
        done = stub.Generate(pb.GenerateRequest(prompt="again", max_new_tokens=3, ignore_eos=True))
        assert done.usage.generated_tokens == 3


def test_concurrent_generations_with_two_workers(make_server):
    server = make_server(max_batch_size=2, max_queue=0)
    channel, stub = stub_for(server)
    results: list[pb.GenerateResponse] = []
    request = pb.GenerateRequest(prompt="parallel", max_new_tokens=200, ignore_eos=True)
    with channel:
        first, _ = start_stream(stub)
        thread = threading.Thread(target=lambda: results.append(stub.Generate(request, timeout=60)))
        thread.start()
        thread.join(60)
        first.cancel()
    assert results and results[0].usage.generated_tokens == 200
    assert results[0].timings.queue_ms < results[0].timings.total_ms
