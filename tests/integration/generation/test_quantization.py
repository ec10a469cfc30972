"""Quantization in the image's environment: settings, version rules, and the refusal.

With the image's pins (bitsandbytes 0.45.0, transformers 4.45) and no CUDA, a quantized
start must be refused before any weights load. That path only exists here; the
quantized path itself runs for real in tests_quant/ (`make test-quant`).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.version import Version
from support import REPO
from zopilot_server.config import ServerConfig, load_config
from zopilot_server.generation.loading import compat, quantization
from zopilot_server.generation.loading.quantization import (
    QuantizationInfo,
    QuantizationUnsupported,
    bitsandbytes_config,
    check_supported,
    quantization_info,
)


def fake_versions(monkeypatch: pytest.MonkeyPatch, **versions: str | None) -> None:
    """Make check_supported see these installed versions (None: not installed)."""
    table = {name.replace("_", "-"): v for name, v in versions.items()}
    monkeypatch.setattr(
        quantization,
        "_installed",
        lambda dist: None if table.get(dist) is None else Version(table[dist]),
    )


@pytest.mark.parametrize(
    ("bnb", "transformers", "device", "allowed"),
    [
        ("0.45.0", "4.45.0", "cuda:0", True),  # the image on a GPU
        ("0.45.0", "4.45.0", "cpu", False),  # the image without one: GPU-only bitsandbytes
        ("0.50.2", "4.57.6", "cpu", True),  # the quantization test env
        ("0.47.0", "4.53.0", "cpu", True),  # the oldest pair measured to work on CPU
        ("0.46.1", "4.57.6", "cpu", False),  # 8-bit gives garbage (FACTS.md)
        ("0.50.2", "4.52.4", "cpu", False),  # bnb 0.50 fails with transformers <= 4.52
    ],
)
def test_cpu_quantization_needs_new_enough_bitsandbytes_and_transformers(
    monkeypatch: pytest.MonkeyPatch, bnb: str, transformers: str, device: str, allowed: bool
) -> None:
    fake_versions(monkeypatch, bitsandbytes=bnb, transformers=transformers)
    for mode in ("8bit", "4bit"):
        config = ServerConfig(quantize=mode)
        if allowed:
            check_supported(config, device)
        else:
            with pytest.raises(QuantizationUnsupported, match=f"--quantize {mode} is not"):
                check_supported(config, device)


def test_missing_bitsandbytes_is_refused_on_any_device(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_versions(monkeypatch, bitsandbytes=None, transformers="4.45.0")
    with pytest.raises(QuantizationUnsupported, match="needs the bitsandbytes package"):
        check_supported(ServerConfig(quantize="4bit"), "cuda:0")
    check_supported(ServerConfig(quantize="none"), "cpu")  # nothing to check


def test_gguf_models_cannot_be_quantized(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_versions(monkeypatch, bitsandbytes="0.45.0", transformers="4.45.0")
    config = ServerConfig(quantize="8bit", model="/models/llama.Q4_K_M.gguf")
    with pytest.raises(QuantizationUnsupported, match=r"cannot be combined with a \.gguf model"):
        check_supported(config, "cuda:0")


def test_flags_and_env_reach_the_bitsandbytes_config() -> None:
    config = load_config(
        ["--quantize", "4bit", "--bnb-4bit-quant-type", "fp4", "--bnb-double-quant"],
        env={"ZOPILOT_BNB_4BIT_COMPUTE_DTYPE": "bfloat16"},
    )
    info = quantization_info(config, "float32")
    assert info == QuantizationInfo("4bit", "fp4", "bfloat16", double_quant=True)
    bnb = bitsandbytes_config(info)
    assert bnb.load_in_4bit and not bnb.load_in_8bit
    assert bnb.bnb_4bit_quant_type == "fp4"
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb.bnb_4bit_use_double_quant is True

    eight = quantization_info(
        load_config(["--quantize", "8bit", "--bnb-int8-threshold", "3.5"], env={}), "float32"
    )
    assert eight == QuantizationInfo("8bit", int8_threshold=3.5)
    bnb = bitsandbytes_config(eight)
    assert bnb.load_in_8bit and bnb.llm_int8_threshold == 3.5
    assert bitsandbytes_config(QuantizationInfo()) is None


def test_auto_compute_dtype_follows_the_model_dtype() -> None:
    info = quantization_info(ServerConfig(quantize="4bit"), "bfloat16")
    assert (info.quant_type, info.compute_dtype, info.double_quant) == ("nf4", "bfloat16", False)
    assert info.describe() == "4bit (nf4, compute bfloat16)"
    assert quantization_info(ServerConfig(), "float32").describe() == "none"
    assert quantization_info(ServerConfig(quantize="8bit"), "float32").describe() == (
        "8bit (int8 threshold 6.0)"
    )


def test_library_noise_is_throttled_once_installed(caplog: pytest.LogCaptureFixture) -> None:
    quantization.quiet_library_noise()
    quantization.quiet_library_noise()  # idempotent: still one filter per message
    caplog.set_level(logging.WARNING)
    matmul = logging.getLogger("bitsandbytes.autograd._functions")
    for _ in range(3):
        matmul.warning("MatMul8bitLt: inputs will be cast from %s to float16", "torch.float32")
    matmul.warning("something else")
    logging.getLogger("accelerate.big_modeling").warning(
        "Some parameters are on the meta device because they were offloaded to the cpu."
    )
    messages = [record.getMessage() for record in caplog.records]
    assert sum(m.startswith("MatMul8bitLt") for m in messages) <= 1
    assert "something else" in messages
    assert not any("meta device" in m for m in messages)


@pytest.mark.parametrize(
    ("version", "name"), [("4.45.0", "torch_dtype"), ("4.55.4", "torch_dtype"), ("4.57.6", "dtype")]
)
def test_dtype_keyword_follows_the_transformers_version(
    monkeypatch: pytest.MonkeyPatch, version: str, name: str
) -> None:
    monkeypatch.setattr(compat, "transformers_version", lambda: Version(version))
    assert compat.dtype_kwarg(torch.float16) == {name: torch.float16}


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, quantization is allowed")
def test_quantized_start_without_cuda_is_refused_before_any_weights_load(tmp_path: Path) -> None:
    """The real process, as an operator starts it: one line, exit 2, no traceback.

    An empty cache proves that nothing was loaded: the default model would be converted
    into it first (logging "converting embedded model") before any weights could load.
    """
    try:
        check_supported(ServerConfig(quantize="4bit"), "cpu")
    except QuantizationUnsupported:
        pass
    else:
        pytest.skip("this environment quantizes on CPU; tests_quant covers it")
    result = subprocess.run(
        [sys.executable, "-m", "zopilot_server", "--port", "0", "--quantize", "4bit"],
        env={"PATH": "/usr/bin:/bin", "ZOPILOT_CACHE_DIR": str(tmp_path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 2, log
    assert "Traceback" not in log
    assert "cannot start: --quantize 4bit is not possible on device 'cpu'" in log
    assert "bitsandbytes 0.45.0 with transformers 4.45.0 quantizes on CUDA GPUs only" in log
    assert "--quantize none" in log
    assert "converting embedded model" not in log and " loaded " not in log
    assert not any(tmp_path.rglob("*.safetensors"))


def test_constraints_quant_overrides_only_what_it_names() -> None:
    """The quant env's pins: constraints.txt's, with constraints-quant.txt's on top."""
    merged = subprocess.run(
        [sys.executable, "scripts/dev_constraints.py", "constraints.txt", "constraints-quant.txt"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    requirements = (line.split("#")[0].strip() for line in merged.splitlines())
    pins = dict(line.split("==") for line in requirements if line)
    assert pins["transformers"] == "4.57.6"
    assert pins["bitsandbytes"] == "0.50.2"
    assert pins["torch"] == "2.13.0"
    assert pins["accelerate"] == "1.0.0"  # not overridden: as constraints.txt says
    assert "torchvision" not in pins
    assert merged.count("transformers==") == 1
