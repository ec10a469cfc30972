"""Recognising out-of-memory errors without importing torch (and without gRPC)."""

from __future__ import annotations

_OOM_NAMES = ("OutOfMemoryError",)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError / torch.OutOfMemoryError, or an allocator message."""
    return type(exc).__name__ in _OOM_NAMES or "out of memory" in str(exc).lower()
