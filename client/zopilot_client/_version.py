"""The installed distribution's version (pyproject.toml is the one place it is written)."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("zopilot-client")
except metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"
