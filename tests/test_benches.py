"""The benchmarks still run and print their JSON (smallest settings; no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
    assert result["tokens_per_s_ratio"] > 0 and "ttft_overhead_ms" in result


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
    assert all(
        r["tokens_per_s_ratio"] > 0 and r["ttft_over_prefill"] > 0 for r in report["results"]
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
