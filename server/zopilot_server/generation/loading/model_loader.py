"""Loading a causal LM and its tokenizer from a local directory, a GGUF file or the default.

The server never reaches the Hugging Face hub: a value of ``--model`` that is not a
local path fails at once with a message saying how to get the files, instead of
hanging on a download or printing a stack trace.

Loading also keeps transformers' advice about what this module already handles out of
the server log (``quiet_handled_noise``); every other warning still shows.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import ServerConfig
from . import default_model
from .compat import dtype_kwarg
from .quantization import (
    QuantizationInfo,
    bitsandbytes_config,
    check_supported,
    quant_state_bytes,
    quantization_info,
    quiet_library_noise,
)

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message says what to do about it."""


@dataclass
class LoadedModel:
    """A model, its tokenizer and the facts GetModelInfo reports about them."""

    model: Any
    tokenizer: Any
    model_id: str
    device: str
    dtype: str
    quantization: QuantizationInfo
    load_seconds: float
    max_context_length: int
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)
    # Measured once at load: bitsandbytes' lazily built states change it after the first
    # forward, and the figure should describe the loaded model, not its history.
    memory_footprint_bytes: int = 0

    @property
    def architecture(self) -> str:
        archs = getattr(self.model.config, "architectures", None) or []
        return archs[0] if archs else type(self.model).__name__

    @property
    def parameter_count(self) -> int:
        # num_parameters() counts a packed 4-bit weight (two values per byte) as the
        # weights it holds; summing numel() would halve the quantized layers.
        return int(self.model.num_parameters())

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


@dataclass(frozen=True)
class ModelSource:
    """Where to load from: a directory, or a directory plus a GGUF file name in it."""

    directory: Path
    gguf_file: str | None
    model_id: str


def resolve_source(config: ServerConfig) -> ModelSource:
    """Turn ``--model`` into a local source, converting the embedded default if needed."""
    if not config.model:
        with quiet_handled_noise(gguf=True):  # the conversion loads the embedded GGUF
            directory = default_model.ensure_converted(config.cache_dir)
        return ModelSource(directory, None, default_model.MODEL_NAME)
    path = Path(config.model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(path.parent, path.name, config.model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"--model {config.model}: directory has no config.json")
        return ModelSource(path, None, config.model)
    if _HUB_ID.match(config.model) and not path.exists():
        raise ModelLoadError(
            f"--model {config.model} looks like a Hugging Face hub id, but this server loads "
            "local files only (no hub access at run time). Download it where the hub is "
            f"reachable (`huggingface-cli download {config.model} --local-dir DIR`) and pass "
            "--model DIR, or mount DIR into the container."
        )
    raise ModelLoadError(
        f"--model {config.model}: no such directory or .gguf file "
        "(leave --model empty for the embedded SmolLM2-135M-Instruct)"
    )


def resolve_device(requested: str) -> str:
    """``auto`` picks CUDA when a GPU is visible; asking for CUDA without one is an error."""
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "auto":
        return "cuda:0" if has_cuda else "cpu"
    if requested == "cuda":
        if not has_cuda:
            raise ModelLoadError("--device cuda, but torch sees no CUDA GPU (use --device cpu)")
        return "cuda:0"
    return "cpu"


def resolve_dtype(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    return "bfloat16" if device.startswith("cuda") else "float32"


def load_model(config: ServerConfig) -> LoadedModel:
    """Load the configured model; raise ModelLoadError / QuantizationUnsupported on misuse."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    device = resolve_device(config.device)
    check_supported(config, device)  # before any weights load
    source = resolve_source(config)
    dtype_name = resolve_dtype(config.dtype, device)
    quant = quantization_info(config, dtype_name)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    kwargs: dict[str, Any] = dtype_kwarg(getattr(torch, dtype_name))
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    bnb = bitsandbytes_config(quant)
    if bnb is not None:
        kwargs["quantization_config"] = bnb
        quiet_library_noise()
    if bnb is not None or device.startswith("cuda"):
        kwargs["device_map"] = {"": device}
    try:
        with quiet_handled_noise(gguf=bool(source.gguf_file)):
            tokenizer = AutoTokenizer.from_pretrained(
                str(source.directory), gguf_file=source.gguf_file
            )
            model, info = AutoModelForCausalLM.from_pretrained(
                str(source.directory), output_loading_info=True, **kwargs
            )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model from {source.directory}: {exc}") from exc
    if source.gguf_file:
        tie_missing_lm_head(model, info)
    _drop_handled(type(model).__module__, _LOGITS_DTYPE_NOTE)  # logged at the first forward
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=source.model_id,
        device=device,
        dtype=dtype_name,
        quantization=quant,
        load_seconds=time.monotonic() - started,
        max_context_length=_max_context(model, tokenizer),
        eos_token_ids=_eos_ids(model, tokenizer),
        # Parameters and buffers, plus bitsandbytes' scales that transformers leaves out.
        memory_footprint_bytes=int(model.get_memory_footprint()) + quant_state_bytes(model),
    )
    log.info(
        "loaded %s (%s, %.1fM params) on %s as %s, quantization %s, %.1f MiB, in %.2f s",
        loaded.model_id,
        loaded.architecture,
        loaded.parameter_count / 1e6,
        loaded.device,
        loaded.dtype,
        quant.describe(),
        loaded.memory_footprint_bytes / 2**20,
        loaded.load_seconds,
    )
    return loaded


# transformers' messages about things this server handles, each with the reason it may go.
# Messages are matched from their start (re.match), so one that says more still shows.
#
# GGUF checkpoints of tied-embedding models carry no lm_head; transformers 4.45 warns that
# it is "newly initialized" and that we "should probably TRAIN this model". The
# conversion (default_model) and tie_missing_lm_head tie it to the embeddings. Only the
# exact list ['lm_head.weight'] is handled: any other missing weight is real and shows.
_GGUF_LM_HEAD = re.compile(
    r"Some weights of \w+ were not initialized from the model checkpoint at .* and are newly "
    r"initialized: \['lm_head\.weight'\]\n",
    re.S,
)
# Llama / T5 tokenizers built from a GGUF have no `legacy` setting; the message itself says
# GGUF users can ignore it, and the embedded model's tokenizer is fixed in default_model.
_GGUF_LEGACY_TOKENIZER = re.compile(r"You are using the default legacy behaviour of the ")
# transformers 4.45 announces that 4.46 stops upcasting logits to float32: the runner
# upcasts them itself (runner._choose), so the change does not reach us.
_LOGITS_DTYPE_NOTE = re.compile(r"Starting from v4\.46, the `logits` model output will have")

# The loggers those messages come from (logging.getLogger returns the same object before
# and after transformers imports the module, so filters can be set up front).
_GGUF_NOISE = (
    ("transformers.modeling_utils", _GGUF_LM_HEAD),
    ("transformers.models.llama.tokenization_llama", _GGUF_LEGACY_TOKENIZER),
    ("transformers.models.llama.tokenization_llama_fast", _GGUF_LEGACY_TOKENIZER),
    ("transformers.models.t5.tokenization_t5", _GGUF_LEGACY_TOKENIZER),
)


class _DropHandled(logging.Filter):
    """Drops the records whose message matches ``pattern``; passes every other one."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def _drop_handled(logger_name: str, pattern: re.Pattern[str]) -> logging.Filter:
    """Install (once per logger and pattern) a filter dropping ``pattern`` on that logger."""
    logger = logging.getLogger(logger_name)
    for existing in logger.filters:
        if isinstance(existing, _DropHandled) and existing.pattern is pattern:
            return existing
    dropper = _DropHandled(pattern)
    logger.addFilter(dropper)
    return dropper


@contextlib.contextmanager
def quiet_handled_noise(*, gguf: bool) -> Iterator[None]:
    """While loading, drop transformers' messages about what we handle (see above) and,
    for GGUF files, the tqdm bar of the dequantization (carriage returns in a log file;
    our own "converting ... (once)" and "loaded ... in N s" lines say what happens)."""
    installed: list[tuple[logging.Logger, logging.Filter]] = []
    patched: tuple[Any, Any] | None = None
    if gguf:
        for logger_name, pattern in _GGUF_NOISE:
            logger = logging.getLogger(logger_name)
            if not any(getattr(f, "pattern", None) is pattern for f in logger.filters):
                dropper = _DropHandled(pattern)
                logger.addFilter(dropper)
                installed.append((logger, dropper))
        patched = _silence_gguf_progress()
    try:
        yield
    finally:
        for logger, dropper in installed:
            logger.removeFilter(dropper)
        if patched is not None:
            module, original = patched
            module.tqdm = original


def _silence_gguf_progress() -> tuple[Any, Any] | None:
    """transformers' GGUF reader calls tqdm directly (not its own switchable wrapper)."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - a transformers without GGUF support
        return None
    original = getattr(gguf_utils, "tqdm", None)
    if original is None or isinstance(original, functools.partial):
        return None
    gguf_utils.tqdm = functools.partial(original, disable=True)
    return gguf_utils, original


def tie_missing_lm_head(model: Any, loading_info: dict[str, Any]) -> None:
    """GGUF files of models with tied embeddings carry no output matrix, and transformers
    4.45 then leaves ``lm_head`` randomly initialised (the model talks nonsense). When the
    checkpoint had no lm_head, tie it to the embeddings, as the original model does."""
    if "lm_head.weight" not in loading_info.get("missing_keys", ()):
        return
    log.info("the GGUF file has no lm_head: tying it to the input embeddings")
    model.config.tie_word_embeddings = True
    model.tie_weights()


def _max_context(model: Any, tokenizer: Any) -> int:
    from_config = getattr(model.config, "max_position_embeddings", None)
    if from_config:
        return int(from_config)
    from_tokenizer = getattr(tokenizer, "model_max_length", 0) or 0
    return int(from_tokenizer) if 0 < from_tokenizer < 10**7 else 2048


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
