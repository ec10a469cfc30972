"""How a client's channel is configured: TLS, retries, load balancing, channel options.

Retries are gRPC's own (the ``retryPolicy`` of the service config), not loops in this
library. gRPC retries a call only while it is uncommitted: once the server has sent
response headers (for a stream: before its first message) the call is committed and
an error is delivered as is. So a stream that has started delivering tokens is never
replayed, and a failure before any token (queue full, model still loading, server
restarting) is retried with exponential backoff and jitter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ._version import __version__

MIB = 1024 * 1024
# The services whose methods the retry policy covers (health included, for probes).
SERVICES = ("zopilot.v1.Generation", "zopilot.v1.Documents", "grpc.health.v1.Health")
# gRPC itself never makes more than five attempts, whatever the policy says.
MAX_ATTEMPTS_LIMIT = 5


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC retry policy for calls that failed before the server delivered anything.

    Attempt ``n`` waits a random time in ``[0, min(initial_backoff * multiplier**(n-1),
    max_backoff)]`` seconds. ``max_attempts`` counts the first attempt too (2..5).
    """

    max_attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    backoff_multiplier: float = 2.0
    retryable_status_codes: tuple[str, ...] = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(
                f"max_attempts must be 2..{MAX_ATTEMPTS_LIMIT} (None disables retries)"
            )
        if self.initial_backoff <= 0 or self.max_backoff <= 0 or self.backoff_multiplier <= 0:
            raise ValueError("backoff values must be > 0")
        for code in self.retryable_status_codes:
            if code not in grpc.StatusCode.__members__:
                raise ValueError(f"unknown status code {code!r}")

    def to_service_config(self) -> dict[str, Any]:
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff}s",
            "maxBackoff": f"{self.max_backoff}s",
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": list(self.retryable_status_codes),
        }


PathOrBytes = str | os.PathLike[str] | bytes


@dataclass(frozen=True)
class TLS:
    """TLS settings: a private CA, a client certificate (mTLS), a server name override.

    Each of the three PEM values may be given as bytes or as a path to a file.
    ``server_name`` checks the certificate against this name instead of the target host.
    """

    root_certificates: PathOrBytes | None = None
    private_key: PathOrBytes | None = None
    certificate_chain: PathOrBytes | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.root_certificates),
            private_key=_pem(self.private_key),
            certificate_chain=_pem(self.certificate_chain),
        )


TLSLike = bool | TLS | grpc.ChannelCredentials | None
"""``tls=``: None/False plaintext, True system roots, a TLS, or ready credentials."""


def _pem(value: PathOrBytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def channel_credentials(tls: TLSLike) -> grpc.ChannelCredentials | None:
    """The channel credentials for ``tls``; None means a plaintext channel."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return grpc.ssl_channel_credentials()
    if isinstance(tls, TLS):
        return tls.credentials()
    if isinstance(tls, grpc.ChannelCredentials):
        return tls
    raise TypeError(f"tls must be a bool, a zopilot_client.TLS or grpc.ChannelCredentials: {tls!r}")


def service_config(retry: RetryPolicy | None, load_balancing: str) -> str:
    """The default service config (JSON) of the channel."""
    method_config: dict[str, Any] = {"name": [{"service": s} for s in SERVICES]}
    config: dict[str, Any] = {
        "loadBalancingConfig": [{load_balancing: {}}],
        "methodConfig": [method_config],
    }
    if retry is not None:
        method_config["retryPolicy"] = retry.to_service_config()
        # Stop retrying altogether while most calls fail (a down server, a full queue
        # everywhere): each failure costs a token, each success gives back 0.1.
        config["retryThrottling"] = {"maxTokens": 10, "tokenRatio": 0.1}
    return json.dumps(config)


def channel_options(
    *,
    retry: RetryPolicy | None,
    load_balancing: str,
    tls: TLSLike,
    extra: Mapping[str, Any] | Sequence[tuple[str, Any]] | None,
) -> list[tuple[str, Any]]:
    """Channel arguments, each chosen on purpose; ``extra`` (user options) wins."""
    options: dict[str, Any] = {
        "grpc.service_config": service_config(retry, load_balancing),
        "grpc.enable_retries": 1 if retry is not None else 0,
        # A parsed spreadsheet can be large: accept what the server may send (256 MiB).
        "grpc.max_receive_message_length": 256 * MIB,
        # Never refuse to send a document locally; the server names its own limit.
        "grpc.max_send_message_length": -1,
        # Keep documents up to the server's default 32 MiB limit retryable: a request
        # larger than this buffer commits the call at once, which disables retries.
        "grpc.per_rpc_retry_buffer_size": 48 * MIB,
        # Ping during long quiet streams so a vanished server is noticed within ~40 s.
        # The server allows pings every 10 s; idle connections are not pinged.
        "grpc.keepalive_time_ms": 30_000,
        "grpc.keepalive_timeout_ms": 10_000,
        "grpc.keepalive_permit_without_calls": 0,
        "grpc.primary_user_agent": f"zopilot-client/{__version__}",
    }
    if isinstance(tls, TLS) and tls.server_name:
        options["grpc.ssl_target_name_override"] = tls.server_name
    options.update(dict(extra or ()))
    return list(options.items())
