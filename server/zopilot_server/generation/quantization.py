"""bitsandbytes quantization: the BitsAndBytesConfig, and refusing it where it cannot work.

bitsandbytes 0.45 (the image's pin) is GPU-only; 8-bit and 4-bit on CPU need
bitsandbytes >= 0.47 with transformers >= 4.53 (FACTS.md). We check that before any
weights load, so an impossible request fails in a second with a message instead of
minutes later with a stack trace.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

from packaging.version import Version

from ..config import ServerConfig

CPU_MIN_BITSANDBYTES = Version("0.47.0")
CPU_MIN_TRANSFORMERS = Version("4.53.0")


class QuantizationUnsupported(RuntimeError):
    """Quantization was asked for on a device / library combination that cannot do it."""


@dataclass(frozen=True)
class QuantizationInfo:
    """What GetModelInfo and the startup log report about quantization."""

    mode: str = "none"
    quant_type: str = ""
    compute_dtype: str = ""
    double_quant: bool = False
    int8_threshold: float = 0.0

    def describe(self) -> str:
        if self.mode == "none":
            return "none"
        if self.mode == "8bit":
            return f"8bit (int8 threshold {self.int8_threshold})"
        dq = ", double quant" if self.double_quant else ""
        return f"4bit ({self.quant_type}, compute {self.compute_dtype}{dq})"


def _installed(dist: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(dist))
    except importlib.metadata.PackageNotFoundError:
        return None


def check_supported(config: ServerConfig, device: str) -> None:
    """Raise QuantizationUnsupported unless ``config.quantize`` can work on ``device``."""
    if config.quantize == "none":
        return
    bnb = _installed("bitsandbytes")
    if bnb is None:
        raise QuantizationUnsupported(
            f"--quantize {config.quantize} needs the bitsandbytes package, which is not "
            "installed (pip install -c constraints.txt bitsandbytes)"
        )
    if device.startswith("cuda"):
        return
    transformers = _installed("transformers") or Version("0")
    if bnb < CPU_MIN_BITSANDBYTES or transformers < CPU_MIN_TRANSFORMERS:
        raise QuantizationUnsupported(
            f"--quantize {config.quantize} needs a CUDA GPU with bitsandbytes {bnb} and "
            f"transformers {transformers}; this device is '{device}'. Run on a GPU "
            f"(--device cuda), use --quantize none, or, on CPU, install bitsandbytes >= "
            f"{CPU_MIN_BITSANDBYTES} with transformers >= {CPU_MIN_TRANSFORMERS} "
            "(`make test-quant` builds such an environment)."
        )


def quantization_info(config: ServerConfig, model_dtype: str) -> QuantizationInfo:
    """The effective quantization settings for ``config``."""
    if config.quantize == "8bit":
        return QuantizationInfo(mode="8bit", int8_threshold=config.bnb_int8_threshold)
    if config.quantize == "4bit":
        compute = (
            model_dtype
            if config.bnb_4bit_compute_dtype == "auto"
            else config.bnb_4bit_compute_dtype
        )
        return QuantizationInfo(
            mode="4bit",
            quant_type=config.bnb_4bit_quant_type,
            compute_dtype=compute,
            double_quant=config.bnb_double_quant,
        )
    return QuantizationInfo()


def bitsandbytes_config(info: QuantizationInfo) -> object | None:
    """transformers' BitsAndBytesConfig for ``info`` (None when not quantizing)."""
    if info.mode == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if info.mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=info.int8_threshold)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=info.quant_type,
        bnb_4bit_compute_dtype=getattr(torch, info.compute_dtype),
        bnb_4bit_use_double_quant=info.double_quant,
    )
