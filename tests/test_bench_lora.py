"""bench/lora.py runs end to end on the tiny model and its report is consistent (its
figures are ratios of the same run; no wall-clock number is asserted)."""

from __future__ import annotations

import statistics

import pytest
from test_benches import run_bench


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
