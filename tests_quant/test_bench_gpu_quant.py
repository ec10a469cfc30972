"""bench/gpu_quant.py's code path, in its CPU smoke mode (its numbers are not checked).

The GPU figures need a GPU; this keeps the script from rotting where there is none: it
must build, save and serve the model in all three modes and print the JSON it promises.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cpu_smoke_mode_serves_every_mode_and_prints_json(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "bench/gpu_quant.py",
            "--device",
            "cpu",
            "--tiny",
            "--tokens",
            "4",
            "--repeats",
            "1",
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["device"] == "cpu" and report["model"]["shape"] == "tiny"
    modes = {entry["mode"]: entry for entry in report["modes"]}
    assert sorted(modes) == ["4bit", "8bit", "none"]
    for mode, entry in modes.items():
        assert entry["quantization"] == mode, entry
        assert entry["generated_tokens"] == 4
        assert entry["vram_peak_bytes"] is None  # no GPU: null, never a made-up number
        assert entry["memory_footprint_bytes"] > 0
        assert [c["streams"] for c in entry["concurrency"]] == [1, 8, 32]
        assert all(c["aggregate_tokens_per_s"] > 0 for c in entry["concurrency"])
    assert modes["4bit"]["memory_footprint_bytes"] < modes["none"]["memory_footprint_bytes"]
