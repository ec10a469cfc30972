"""zopilot_cache_config_info: vLLM's cache_config_info, which the Gateway API Inference
Extension's endpoint picker reads (block_size, num_gpu_blocks), scraped from the real
/metrics endpoint of a real server and checked against what GetModelInfo says of the
arena."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from metrics_scrape import scrape
from support import InProcessServer, free_port
from zopilot_client.pb import generation_pb2 as pb
from zopilot_client.pb import generation_pb2_grpc
from zopilot_server import metrics
from zopilot_server.generation.domain import EngineLoad

NAME = "zopilot_cache_config_info"


def info_samples(port: int) -> list[tuple[dict[str, str], float]]:
    return [(dict(labels), v) for (name, labels), v in scrape(port).items() if name == NAME]


def model_info(server: InProcessServer) -> pb.ModelInfo:
    with grpc.insecure_channel(server.target) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        return stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)


def test_block_size_and_blocks_match_the_arena(
    make_server: Callable[..., InProcessServer],
) -> None:
    port = free_port()
    # 200 tokens per slot: 12 whole 16-token blocks and an 8-token tail that caches nothing.
    server = make_server(metrics_port=port, max_batch_size=3, kv_slot_tokens=200)
    kv = model_info(server).kv_cache
    assert (kv.mode, kv.slots, kv.tokens_per_slot, kv.prefix_cache) == ("arena", 3, 200, True)
    ((labels, value),) = info_samples(port)
    assert value == 1.0
    assert labels["block_size"] == str(kv.prefix_block_tokens) == "16"
    assert labels["num_gpu_blocks"] == str(3 * (200 // 16)) == "36"
    assert labels["model_name"]  # the same model label as every other gauge


def test_absent_with_the_prefix_cache_off(make_server: Callable[..., InProcessServer]) -> None:
    """No prefix blocks to describe: the picker falls back to its own configuration
    rather than read a block size that means nothing here."""
    port = free_port()
    server = make_server(metrics_port=port, prefix_cache="off")
    assert model_info(server).kv_cache.prefix_cache is False
    assert info_samples(port) == []


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        (None, None),  # still loading: no engine, no facts
        (
            EngineLoad(0, 0, 0, 48, kv_slots=1, kv_tokens_per_slot=48, prefix_block_tokens=16),
            ("16", "3"),
        ),
        (  # a slot smaller than a block holds no cacheable block
            EngineLoad(0, 0, 0, 40, kv_slots=4, kv_tokens_per_slot=10, prefix_block_tokens=16),
            ("16", "0"),
        ),
    ],
    ids=["loading", "exact", "slot-under-a-block"],
)
def test_labels_from_the_engine_load(
    make_server: Callable[..., InProcessServer],
    load: EngineLoad | None,
    expected: tuple[str, str] | None,
) -> None:
    port = free_port()
    server = make_server(metrics_port=port)

    class Source:
        def engine_load(self) -> EngineLoad | None:
            return load

        def parser_load(self) -> tuple[int, int]:
            return (0, 0)

    metrics.bind(Source())  # type: ignore[arg-type]
    try:
        samples = info_samples(port)
    finally:
        metrics.bind(server.running)
    if expected is None:
        assert samples == []
    else:
        ((labels, value),) = samples
        assert (labels["block_size"], labels["num_gpu_blocks"], value) == (*expected, 1.0)
