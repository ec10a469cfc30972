"""The quantization suite (`make test-quant`): bitsandbytes 8-bit / 4-bit for real, on CPU.

It runs in its own environment (.venv-quant: transformers 4.57.6, bitsandbytes 0.50.2,
torch 2.13.0; see constraints-quant.txt), because the image's bitsandbytes 0.45 cannot
quantize without CUDA. The main suite (tests/, the image's versions) tests the refusal
instead. This directory is outside the main run's testpaths; run with the wrong
environment, it stops at once with a message rather than skipping everything.

The model fixtures are the main suite's (tests/conftest.py), loaded under another
module name so that both conftests can exist; tests/support.py is shared as is.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from zopilot_server.config import ServerConfig
from zopilot_server.generation.loading.quantization import QuantizationUnsupported, check_supported

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))  # for tests/support.py, as in the main suite


def _load_shared_conftest() -> Any:
    spec = importlib.util.spec_from_file_location("_main_suite_conftest", TESTS / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_shared = _load_shared_conftest()
model_cache_dir = _shared.model_cache_dir
smollm2_dir = _shared.smollm2_dir
tiny_model_dir = _shared.tiny_model_dir


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to run (not skip) where bitsandbytes cannot quantize on CPU."""
    try:
        check_supported(ServerConfig(quantize="4bit"), "cpu")
    except QuantizationUnsupported as exc:
        pytest.exit(
            f"tests_quant needs the quantization environment (`make test-quant`): {exc}",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
