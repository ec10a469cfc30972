"""The served tokenizer's files as one zip (vllm.grpc.engine GetTokenizer).

A gateway that tokenizes and applies the chat template itself (smg) can fetch them from
the worker instead of needing its own copy of the model. ``save_pretrained`` writes what
the loaded tokenizer is, whatever it was loaded from (a directory, the embedded default
model, a GGUF file): tokenizer.json, its config with the chat template, special tokens.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# One gRPC message each: far below the default 4 MiB receive limit of any client.
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class TokenizerArchive:
    """The zip's bytes and their SHA-256 (hex), sent on the last chunk."""

    data: bytes
    sha256: str

    def chunks(self) -> list[bytes]:
        return [self.data[i : i + CHUNK_BYTES] for i in range(0, len(self.data), CHUNK_BYTES)]


def build(tokenizer: Any) -> TokenizerArchive:
    """Zip what ``tokenizer.save_pretrained`` writes (files at the zip's root)."""
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="zopilot-tokenizer-") as folder:
        tokenizer.save_pretrained(folder)
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(folder).rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(folder).as_posix())
    data = buffer.getvalue()
    return TokenizerArchive(data, hashlib.sha256(data).hexdigest())
