"""Transport security and the API key: server TLS / mTLS credentials and key loading.

Kept apart from app.py so the server construction only asks "credentials or None?" and
"which key?". Files are read once at startup; a missing or unreadable file stops the
start with an error naming the flag, never a silent fallback to plaintext or no auth.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from .config import ServerConfig


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {exc.strerror or exc}") from exc


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from --tls-cert / --tls-key (None: plaintext).

    With --tls-client-ca every client must present a certificate signed by that CA
    (mTLS); the handshake refuses the others before any RPC runs.
    """
    if not config.tls_cert:
        return None
    chain = _read(config.tls_cert, "--tls-cert")
    key = _read(config.tls_key, "--tls-key")
    if not config.tls_client_ca:
        return grpc.ssl_server_credentials([(key, chain)])
    ca = _read(config.tls_client_ca, "--tls-client-ca")
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=ca, require_client_auth=True
    )


def api_key(config: ServerConfig) -> str:
    """The required API key ('' = none): --api-key, or the first line of --api-key-file."""
    if not config.api_key_file:
        return config.api_key
    text = _read(config.api_key_file, "--api-key-file").decode("utf-8", "replace")
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise ValueError(f"--api-key-file {config.api_key_file}: the file is empty")
    return key


KEY_ON_COMMAND_LINE = (
    "--api-key on the command line is visible to every local user (ps, /proc/<pid>/cmdline); "
    "use --api-key-file (or ZOPILOT_API_KEY) instead"
)


def key_on_command_line(argv: Sequence[str]) -> bool:
    """True when ``argv`` carries the key itself (``--api-key K`` or ``--api-key=K``)."""
    return any(arg == "--api-key" or arg.startswith("--api-key=") for arg in argv)
