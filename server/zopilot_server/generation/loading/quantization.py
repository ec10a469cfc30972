"""bitsandbytes quantization: the BitsAndBytesConfig, and refusing it where it cannot work.

bitsandbytes 0.45 (the image's pin) is GPU-only; 8-bit and 4-bit on CPU need
bitsandbytes >= 0.47 with transformers >= 4.53 (FACTS.md). We check that before any
weights load, so an impossible request fails in a second with a message instead of
minutes later with a stack trace.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass
from typing import Any

from packaging.version import Version

from ...config import ServerConfig

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
        """One phrase for the startup log, naming only the settings that apply."""
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
    """Raise QuantizationUnsupported unless ``config.quantize`` can work on ``device``.

    Reads package metadata only (no ``import bitsandbytes``, no weights), so a refused
    start costs about a second and says exactly what would make it work.
    """
    if config.quantize == "none":
        return
    if config.model.endswith(".gguf"):
        # transformers refuses it too, but only after the tokenizer has loaded.
        raise QuantizationUnsupported(
            f"--quantize {config.quantize} cannot be combined with a .gguf model: transformers "
            "does not quantize GGUF checkpoints with bitsandbytes. Convert it to a model "
            "directory first (save_pretrained), or use --quantize none."
        )
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
            f"--quantize {config.quantize} is not possible on device '{device}': "
            f"bitsandbytes {bnb} with transformers {transformers} quantizes on CUDA GPUs "
            f"only (on CPU it needs bitsandbytes >= {CPU_MIN_BITSANDBYTES} and "
            f"transformers >= {CPU_MIN_TRANSFORMERS}). Run on a CUDA GPU (--device cuda) "
            "or start with --quantize none."
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


def quant_state_bytes(model: Any) -> int:
    """Bytes of bitsandbytes' scaling constants, which ``get_memory_footprint`` misses.

    transformers counts parameters and buffers only. A 4-bit weight also carries a
    quant state (one absmax per 64-value block: about 6% on top of the packed nf4/fp4
    weights, or 1.6% with double quant, whose second-level state we count too), an
    8-bit weight its per-row scales (``SCB``). Tensors shared between weights are
    counted once.
    """
    seen: set[int] = set()
    total = 0

    def add(tensor: Any) -> None:
        nonlocal total
        if tensor is None or not hasattr(tensor, "element_size") or tensor.data_ptr() in seen:
            return
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()

    for module in model.modules():
        for param in module.parameters(recurse=False):
            state = getattr(param, "quant_state", None)
            while state is not None:  # 4-bit; double quant nests a second state
                for name in ("absmax", "code", "offset"):
                    add(getattr(state, name, None))
                state = getattr(state, "state2", None)
            add(getattr(param, "SCB", None))  # 8-bit row scales, until the first forward,
        add(getattr(getattr(module, "state", None), "SCB", None))  # which moves them here
    return total


class _Throttle(logging.Filter):
    """Lets the first ``limit`` records that start with ``prefix`` through, drops the rest."""

    def __init__(self, prefix: str, limit: int) -> None:
        super().__init__()
        self.prefix = prefix
        self.limit = limit
        self.seen = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.prefix):
            return True
        self.seen += 1
        return self.seen <= self.limit


# (logger, message prefix, how many to keep). Both come from the libraries, not from us.
_NOISE = (
    # bitsandbytes >= 0.46 logs this on EVERY int8 matmul (each layer, each decoding
    # step) unless the model runs in float16; once says everything there is to say.
    ("bitsandbytes.autograd._functions", "MatMul8bitLt: inputs will be cast from", 1),
    # accelerate dispatches bnb models with hooks even onto a single device and then
    # claims that parameters were "offloaded to the cpu": with our single-device map
    # (the whole model on --device) nothing is offloaded, so the line only misleads.
    ("accelerate.big_modeling", "Some parameters are on the meta device because", 0),
)


def quiet_library_noise() -> None:
    """Install the filters for ``_NOISE`` once; harmless to call again."""
    for logger_name, prefix, limit in _NOISE:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _Throttle) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_Throttle(prefix, limit))
