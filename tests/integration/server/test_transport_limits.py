"""What the transport itself does to a busy or stalled client: a burst on one channel is
answered by admission, never refused by HTTP/2; a consumer that stops reading is ended
after --send-timeout-s and its row leaves the batch (raw HTTP/2 with the h2 package for
the shapes a gRPC client cannot make)."""

from __future__ import annotations

import concurrent.futures
from collections import Counter

import grpc
import pytest
from raw_http2 import RawHttp2
from support import finish_spy, retry_delay_s, wait_until
from zopilot_client.pb import generation_pb2 as pb
from zopilot_client.pb import generation_pb2_grpc as pb_grpc
from zopilot_server.config import ServerConfig
from zopilot_server.generation.domain import FinishReason


def test_a_burst_on_one_channel_is_answered_by_admission_not_refused(make_server) -> None:
    """200 streams at once on one channel (the old 128-stream limit refused 66 of them
    with RST_STREAM, 'Stream removed'): each is either served or told when to retry."""
    server = make_server(max_batch_size=16, max_queue=32, doc_prestart=False)
    request = pb.GenerateRequest(prompt="burst", max_new_tokens=16, ignore_eos=True)

    def drain(call: grpc.Future) -> object:
        try:
            return list(call)[-1].finish_reason
        except grpc.RpcError as error:
            return error

    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.GenerationStub(channel)
        calls = [stub.GenerateStream(request, timeout=120) for _ in range(200)]
        with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
            results = list(pool.map(drain, calls))
    refused = [r for r in results if isinstance(r, grpc.RpcError)]
    codes = Counter(error.code() for error in refused)
    assert set(codes) <= {grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert all(retry_delay_s(error) > 0 for error in refused)
    served = [r for r in results if not isinstance(r, grpc.RpcError)]
    assert len(served) >= 48  # the batch and the queue, all of them served
    assert set(served) == {pb.FINISH_REASON_LENGTH}


def test_the_stream_limit_must_stay_above_admission() -> None:
    config = ServerConfig()
    assert config.streams_per_connection >= config.admitted_calls + 64
    big = ServerConfig(max_queue=1000)
    assert big.streams_per_connection == 4 * big.admitted_calls
    with pytest.raises(ValueError, match="max-streams-per-connection"):
        ServerConfig(max_streams_per_connection=60).validated()


def test_a_never_reading_stream_leaves_the_batch(make_server) -> None:
    """Its handler is stuck at the first yield (window 0): without --send-timeout-s its
    row would run all 1500 tokens into a buffer nobody reads. (The HTTP/2 stream itself
    stays open until the connection ends: grpc.aio cannot reset it; README "Limits".)"""
    server = make_server(send_timeout_s=1.0, doc_prestart=False)
    engine = server.running.engine
    client = RawHttp2(server.target)
    try:
        request = pb.GenerateRequest(
            prompt="never read", max_new_tokens=1500, ignore_eos=True, request_id="stalled"
        )
        with finish_spy(server) as spy:
            client.call("/zopilot.v1.Generation/GenerateStream", request.SerializeToString())
            assert wait_until(lambda: engine.load().running == 1, timeout=20)
            # CANCELLED, not LENGTH: the stall ended it, long before its 1500 tokens.
            assert spy.reason("stalled", timeout=30) is FinishReason.CANCELLED
        assert wait_until(lambda: engine.load().running == 0, timeout=10)
    finally:
        client.close()
    # The server goes on serving the clients that read.
    with grpc.insecure_channel(server.target) as channel:
        reply = pb_grpc.GenerationStub(channel).Generate(
            pb.GenerateRequest(prompt="still here", max_new_tokens=3), timeout=30
        )
        assert reply.usage.generated_tokens == 3
