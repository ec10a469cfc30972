"""The foundation end to end: health, model info, a stream, over real loopback gRPC."""

from __future__ import annotations

from grpc_health.v1 import health_pb2
from zopilot_client.pb import generation_pb2 as pb


def test_health_serving_after_load(tiny_server):
    assert tiny_server.health() == health_pb2.HealthCheckResponse.SERVING
    assert tiny_server.health("zopilot.v1.Generation") == health_pb2.HealthCheckResponse.SERVING


def test_stream_deltas_concatenate_to_unary_text(tiny_stub):
    request = pb.GenerateRequest(prompt="Hello there", max_new_tokens=12, ignore_eos=True)
    chunks = list(tiny_stub.GenerateStream(request, timeout=30))
    assert chunks[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert chunks[-1].usage.generated_tokens == 12
    unary = tiny_stub.Generate(request, timeout=30)
    assert "".join(c.text for c in chunks) == unary.text
