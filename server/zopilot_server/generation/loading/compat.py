"""Where transformers 4.45 (the image) and 4.57 (the quantization test env) differ.

The server must run on both: the image pins transformers 4.45, and bitsandbytes only
quantizes on CPU with transformers >= 4.53, so `make test-quant` runs 4.57. Every API
difference we depend on is guarded here, in one place, instead of version checks
scattered through the loader:

- ``from_pretrained(torch_dtype=...)`` became ``dtype=...`` in 4.56 (transformers
  #39782); 4.57 still accepts the old name but logs a deprecation warning on every load.
- Newer versions (4.57 measured) make ``tokenizer.save_pretrained`` write the chat
  template to a separate ``chat_template.jinja`` file, which 4.45 does not read: the
  embedded model converted by 4.57 into a shared cache lost its chat template when 4.45
  loaded it. ``save_jinja_files=False`` keeps the template inside
  ``tokenizer_config.json``, which every version reads.

One difference is bridged where it is used instead, because it is part of how the runner
builds its KV cache: since 4.56 a ``Cache`` is made of per-layer objects (the runner's
cache code checks for them). The rest the engine uses (the model's forward with a
``Cache``, the ``TextIteratorStreamer`` base, GGUF loading) behaves the same: the main
suite's generation and client tests pass under 4.57 too (run with .venv-quant).
"""

from __future__ import annotations

import importlib.metadata
from functools import cache
from typing import Any

from packaging.version import Version

DTYPE_KWARG_SINCE = Version("4.56.0")


@cache
def transformers_version() -> Version:
    """The installed transformers version (read once; it cannot change in a process)."""
    return Version(importlib.metadata.version("transformers"))


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """``from_pretrained`` keyword for the weights dtype, named as this version wants it."""
    name = "dtype" if transformers_version() >= DTYPE_KWARG_SINCE else "torch_dtype"
    return {name: dtype}


# Keyword arguments for ``tokenizer.save_pretrained`` that produce a directory every
# supported transformers version reads completely (4.45 ignores the unknown keyword).
PORTABLE_TOKENIZER_SAVE: dict[str, Any] = {"save_jinja_files": False}
