"""What GetModelInfo and /metrics report about the KV arena, against a real in-process
server on the tiny model, idle and with a stream holding a slot.
"""

from __future__ import annotations

from support import wait_until
from zopilot_server.config import ServerConfig


def test_model_info_and_metrics_report_the_arena(tiny_config: ServerConfig) -> None:
    """What GetModelInfo and /metrics say is what the arena holds, idle and busy."""
    import dataclasses

    import grpc
    from support import InProcessServer, free_port, metric_values
    from zopilot_client.pb import generation_pb2 as pb
    from zopilot_client.pb import generation_pb2_grpc

    port = free_port()
    server = InProcessServer(
        dataclasses.replace(
            tiny_config, metrics_port=port, max_batch_size=4, kv_cache_memory_mib=16
        )
    )

    def gauges() -> dict[str, float]:
        return metric_values(port, "zopilot_kv_cache")

    try:
        engine = server.running.engine
        assert engine is not None
        with grpc.insecure_channel(server.target) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).kv_cache
            # tiny Llama: 2 layers x 2 KV heads x 16 dims x K and V x 4 bytes = 512 B a token
            assert (info.mode, info.slots) == ("arena", 4)
            assert info.tokens_per_slot == 2048  # the model's whole context fits 16 MiB
            assert info.bytes == 4 * 2048 * 512 and info.serial_reason == ""
            idle = gauges()
            assert idle["zopilot_kv_cache_slots"] == 4 and idle["zopilot_kv_cache_slots_used"] == 0
            assert idle["zopilot_kv_cache_bytes"] == info.bytes
            assert idle["zopilot_kv_cache_tokens_budget"] == 4 * 2048
            stream = stub.GenerateStream(
                pb.GenerateRequest(prompt="Hello there", max_new_tokens=2000, ignore_eos=True),
                timeout=60,
            )
            next(stream)
            busy = gauges()
            assert busy["zopilot_kv_cache_slots_used"] == 1
            held = engine.scheduler._runner.arena.tokens_used
            assert (
                busy["zopilot_kv_cache_tokens_used"] >= 2
                and held >= busy["zopilot_kv_cache_tokens_used"]
            )
            stream.cancel()
        assert wait_until(lambda: gauges()["zopilot_kv_cache_slots_used"] == 0)
        assert gauges()["zopilot_kv_cache_tokens_used"] == 0
    finally:
        server.stop()
