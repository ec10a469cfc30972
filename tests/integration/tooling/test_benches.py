"""The benchmarks compute the right figures, and still run and print their JSON.

The figures (tokens/s, TTFT, their medians and ratios) are checked against hand-computed
values on a fake clock: each fake stream or fake ``generate`` moves the clock by a known
step per token, so the expected numbers follow from the step alone and no wall-clock
number is asserted. The prompt a bench measures is checked against the real tiny server
in-process (same input tokens on both sides). The subprocess runs (smallest settings)
prove the scripts still run end to end and that their reports are consistent.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from support import REPO
from zopilot_client.pb import generation_pb2 as pb


def load_bench(name: str) -> ModuleType:
    """Import ``bench/<name>.py`` (bench/ is not a package; its scripts import each other)."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(
            f"bench_{name}", REPO / "bench" / f"{name}.py"
        )
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "bench"))


class FakeClock:
    """``time`` for a bench module: perf_counter() is a per-thread value the fakes move."""

    def __init__(self) -> None:
        self._local = threading.local()

    def perf_counter(self) -> float:
        return getattr(self._local, "now", 0.0)

    def advance(self, seconds: float) -> None:
        self._local.now = self.perf_counter() + seconds

    def module(self) -> SimpleNamespace:
        return SimpleNamespace(perf_counter=self.perf_counter)


class FakeStub:
    """GenerateStream that takes ``step_s`` per token (``first_s`` before the first) and
    ends with the usage a server reports."""

    def __init__(
        self, clock: FakeClock, step_s: float, first_s: float, input_tokens: int = 5
    ) -> None:
        self.clock, self.step_s, self.first_s = clock, step_s, first_s
        self.input_tokens = input_tokens

    def GenerateStream(self, request: pb.GenerateRequest, timeout: float) -> Iterator[Any]:
        for i in range(request.max_new_tokens):
            self.clock.advance(self.first_s if i == 0 else self.step_s)
            chunk = pb.GenerateResponse(text="x")
            if i == request.max_new_tokens - 1:
                chunk.finish_reason = pb.FINISH_REASON_LENGTH
                chunk.usage.generated_tokens = request.max_new_tokens
                chunk.usage.input_tokens = self.input_tokens
            yield chunk


class FakeModel:
    """``model.generate`` that streams the prompt, then one token per ``step_s``."""

    def __init__(self, clock: FakeClock, step_s: float, first_s: float) -> None:
        self.clock, self.step_s, self.first_s = clock, step_s, first_s

    def generate(self, ids: Any, *, max_new_tokens: int, streamer: Any, **_: Any) -> Any:
        import torch

        streamer.put(ids)
        for i in range(max_new_tokens):
            self.clock.advance(self.first_s if i == 0 else self.step_s)
            streamer.put(torch.tensor([0]))
        streamer.end()
        return torch.zeros((1, ids.shape[1] + max_new_tokens), dtype=torch.long)


class FakeTokenizer:
    pad_token_id = 0

    def apply_chat_template(self, messages: Any, **_: Any) -> str:
        return messages[0]["content"]

    def __call__(self, text: str, **_: Any) -> dict[str, list[int]]:
        return {"input_ids": [1] * 5}


def test_stream_bench_figures_on_a_fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = load_bench("stream")
    clock = FakeClock()
    monkeypatch.setattr(stream, "time", clock.module())
    # In process: first token after 20 ms, then 10 ms per token, 50 tokens.
    local = stream.in_process_run(FakeModel(clock, 0.010, 0.020), FakeTokenizer(), 50)
    assert local["ttft_ms"] == pytest.approx(20.0)
    assert local["tokens_per_s"] == pytest.approx(50 / (0.020 + 49 * 0.010))
    # Over gRPC: 5 ms later to the first token and 12.5 ms per token.
    remote = stream.grpc_run(FakeStub(clock, 0.0125, 0.025), 50, input_tokens=5)
    assert remote["ttft_ms"] == pytest.approx(25.0)
    assert remote["tokens_per_s"] == pytest.approx(50 / (0.025 + 49 * 0.0125))
    slow = stream.grpc_run(FakeStub(clock, 0.050, 0.025), 50, input_tokens=5)
    summary = stream.summarise({"in_process": [local] * 3, "grpc": [remote, remote, slow]})
    assert summary["grpc"]["tokens_per_s"] == remote["tokens_per_s"]  # the median, not the mean
    assert summary["tokens_per_s_ratio"] == pytest.approx(
        remote["tokens_per_s"] / local["tokens_per_s"]
    )
    assert summary["ttft_overhead_ms"] == pytest.approx(5.0)
    assert summary["meets_targets"] is False  # 0.80x is below the 0.95x target
    with pytest.raises(AssertionError, match="same prompt"):
        stream.grpc_run(FakeStub(clock, 0.01, 0.01, input_tokens=6), 3, input_tokens=5)


def test_concurrency_bench_aggregates_concurrent_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    concurrency = load_bench("concurrency")
    clock = FakeClock()
    monkeypatch.setattr(concurrency, "time", clock.module())
    # Three streams, each from its own thread starting at t=0 (the clock is per thread):
    # 10/20/30 ms to the first token, then 10 ms per token; 8, 8 and 4 tokens.

    class PerRequestStub:
        def GenerateStream(self, request: pb.GenerateRequest, timeout: float) -> Iterator[Any]:
            first = {"a": 0.010, "b": 0.020, "c": 0.030}[request.messages[0].content]
            yield from FakeStub(clock, 0.010, first).GenerateStream(request, timeout)

    requests = [
        concurrency.chat_request("a", 8),
        concurrency.chat_request("b", 8),
        concurrency.chat_request("c", 4),
    ]
    report = concurrency.grpc_concurrent(PerRequestStub(), requests)
    ends = [0.010 + 7 * 0.010, 0.020 + 7 * 0.010, 0.030 + 3 * 0.010]
    assert report["tokens_per_s"] == pytest.approx((8 + 8 + 4) / max(ends))
    assert report["ttft_median_ms"] == pytest.approx(statistics.median([10.0, 20.0, 30.0]))
    assert report["finish_reasons"] == [pb.FINISH_REASON_LENGTH] * 3


def test_the_stream_bench_measures_the_prompt_the_server_counts(tiny_server) -> None:
    """The in-process side tokenizes the prompt as the server does: grpc_run fails when
    the server's input_tokens differ, so a passing run proves both sides saw one prompt."""
    import grpc
    from zopilot_client.pb import generation_pb2_grpc

    stream = load_bench("stream")
    tokenizer = tiny_server.running.engine.loaded.tokenizer
    with grpc.insecure_channel(tiny_server.target) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        figures = stream.grpc_run(stub, 6, len(stream.prompt_ids(tokenizer)))
    assert figures["tokens_per_s"] > 0 and figures["ttft_ms"] > 0


def run_bench(script: str, *args: str, cache_dir: Path) -> dict:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args, "--cache-dir", str(cache_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout[result.stdout.index("{") :])


@pytest.mark.slow
def test_stream_bench_reports_ratios(model_cache_dir):
    report = run_bench("stream.py", "--models", "tiny", "--repeats", "1", cache_dir=model_cache_dir)
    (result,) = report["results"]
    assert result["model"] == "tiny"
    local, remote = result["in_process"], result["grpc"]
    assert result["tokens_per_s_ratio"] == pytest.approx(
        remote["tokens_per_s"] / local["tokens_per_s"]
    )
    assert result["ttft_overhead_ms"] == pytest.approx(remote["ttft_ms"] - local["ttft_ms"])


@pytest.mark.slow
def test_documents_bench_reports_ratios(model_cache_dir):
    report = run_bench(
        "documents.py", "--rounds", "1", "--per-round", "1", "--ocr-pages", "1",
        cache_dir=model_cache_dir,
    )  # fmt: skip
    assert report["overall"]["ratio"] > 0
    assert report["ocr"]["png_200dpi"]["word_recall"] >= 0.9
    assert set(report["per_type"]) >= {"docx", "xlsx", "pdf"}
    assert set(report["fidelity"]["per_type_min"]) >= {"docx", "xlsx", "pptx", "csv", "pdf"}


@pytest.mark.slow
def test_concurrency_bench_reports_ratios(model_cache_dir):
    report = run_bench(
        "concurrency.py",
        "--model",
        "tiny",
        "--n",
        "1",
        "2",
        "--tokens",
        "4",
        "--skip-join",
        "--frontends",
        "2",
        "--frontend-runs",
        "1",
        cache_dir=model_cache_dir,
    )
    assert [r["n"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        assert r["grpc"]["finish_reasons"] == [pb.FINISH_REASON_LENGTH] * r["n"]
        assert r["tokens_per_s_ratio"] == pytest.approx(
            r["grpc"]["tokens_per_s"] / r["in_process"]["tokens_per_s"]
        )
        assert r["ttft_over_prefill"] == pytest.approx(
            r["grpc"]["ttft_median_ms"] / r["in_process"]["prefill_ms"]
        )
    assert report["long_prompt_join"] is None
    frontends = report["frontends"]
    assert frontends["kserve_over_zopilot"] > 0 and frontends["tgis_over_zopilot"] > 0


@pytest.mark.slow
def test_structured_bench_reports_ratios_and_compile_times(model_cache_dir):
    report = run_bench(
        "structured.py", "--model", "tiny", "--n", "1", "2", "--tokens", "4", "--repeats", "1",
        cache_dir=model_cache_dir,
    )  # fmt: skip
    assert [r["n"] for r in report["results"]] == [1, 2]
    assert all(r["tokens_per_s_ratio"] > 0 for r in report["results"])
    compiled = report["compile"]
    assert compiled["cached_median_ms"] < compiled["uncached_median_ms"]
    assert compiled["mask_per_step_median_ms"] > 0


@pytest.mark.slow
def test_speculative_bench_compares_on_and_off_with_identical_text(model_cache_dir):
    report = run_bench(
        "speculative.py", "--model", "tiny", "--streams", "1", "2", "--tokens", "8",
        "--repeats", "1", "--warm", "1", "--workloads", "copy", "chat",
        cache_dir=model_cache_dir,
    )  # fmt: skip
    assert report["speculative_tokens"] > 0
    assert set(report["workloads"]) == {"copy", "chat"}
    for rows in report["workloads"].values():
        assert [r["streams"] for r in rows] == [1, 2]
        for r in rows:
            assert r["identical_text"] is True
            assert r["tokens_per_s_ratio"] == pytest.approx(
                r["on"]["tokens_per_s"] / r["off"]["tokens_per_s"]
            )
            assert 0.0 <= r["acceptance_rate"] <= 1.0


@pytest.mark.slow
def test_lora_bench_reports_ratio_and_memory(model_cache_dir):
    report = run_bench(
        "lora.py", "--model", "tiny", "--tokens", "4", "--repeats", "1", "--rank", "4",
        cache_dir=model_cache_dir,
    )  # fmt: skip
    assert report["benchmark"] == "lora" and len(report["base"]) == len(report["lora"]) == 1
    base = statistics.median(r["tokens_per_s"] for r in report["base"])
    lora = statistics.median(r["tokens_per_s"] for r in report["lora"])
    assert report["tokens_per_s_ratio"] == pytest.approx(lora / base)
    assert report["target"]["met"] == (report["tokens_per_s_ratio"] >= 0.8)
    # tiny Llama: 2 layers, hidden 64, MLP 128, 2 KV heads of 16; rank 4 on all 7 modules
    per_layer = sum(4 * (i + o) * 4 for i, o in [(64, 64), (64, 32), (64, 32), (64, 64)])
    per_layer += sum(4 * (i + o) * 4 for i, o in [(64, 128), (64, 128), (128, 64)])
    assert set(report["adapter_bytes"].values()) == {2 * per_layer}
    assert len(report["adapter_bytes"]) == 4
    name = next(iter(report["adapter_bytes"]))
    assert report["adapter_over_base"][name] == pytest.approx(2 * per_layer / report["base_bytes"])
    assert all(r["finish_reasons"] == [1] * 8 for r in report["lora"])


@pytest.mark.slow
def test_gateway_bench_compares_policies_through_smg(model_cache_dir):
    report = run_bench(
        "gateway.py", "--model", "tiny", "--conversations", "2", "--turns", "2",
        "--system-requests", "2", "--tokens", "4", "--overhead-tokens", "8",
        "--overhead-repeats", "1", cache_dir=model_cache_dir,
    )  # fmt: skip
    policies = report["policies"]
    assert set(policies) == {"cache_aware", "round_robin"}
    for policy in policies.values():
        assert policy["multiturn"]["requests"] == 4 and policy["system"]["requests"] == 2
        for workload in policy.values():
            assert 0 <= workload["prefix_hit_rate"] <= 1
            assert sum(workload["prompt_tokens_per_replica"]) == workload["prompt_tokens_looked_up"]
            assert workload["prompt_tokens_looked_up"] > 0 and workload["ttft_p50_s"] > 0
    # Later turns re-send the history: cache_aware finds part of it cached.
    assert policies["cache_aware"]["multiturn"]["prefix_hit_rate"] > 0
    multiturn = report["comparison"]["multiturn"]
    aware, robin = (policies[p]["multiturn"] for p in ("cache_aware", "round_robin"))
    assert multiturn["ttft_p50_ratio"]["value"] == pytest.approx(
        aware["ttft_p50_s"] / robin["ttft_p50_s"], rel=1e-2
    )
    overhead = report["gateway_overhead"]
    assert overhead["tokens_per_s_ratio"] == pytest.approx(
        overhead["through_smg_tokens_per_s"] / overhead["direct_tokens_per_s"], rel=1e-2
    )
