"""Who may call: the API key check and the cap on anonymous health ``Watch`` streams.

Two links of the RPC chain (rpc_chain.py). With an API key (``--api-key-file``, or
``--api-key``) every call but health needs exactly one ``authorization: Bearer <key>``
value; health stays open so that probes need no secret. Health ``Watch`` streams that do
not carry the key are open-ended (about 21 KiB each, held until the client leaves), so at
most ``--max-health-watches`` of them run at a time; beyond, RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import hmac
from typing import Any

import grpc

from .errors import ResourceExhausted, Unauthenticated, abort
from .rpc_chain import Behavior, Call, Link

HEALTH_SERVICE = "grpc.health.v1.Health"
WATCH_METHOD = f"/{HEALTH_SERVICE}/Watch"
MISSING_OR_WRONG = "missing or wrong API key (send 'authorization: Bearer <key>')"
DUPLICATED = "more than one authorization value; send exactly one 'authorization: Bearer <key>'"


class ApiKey:
    """The expected key. The scheme is matched case-insensitively (RFC 7235); the key is
    compared in constant time, so response timing does not reveal how much of a guess was
    right."""

    def __init__(self, api_key: str) -> None:
        self._expected = api_key.encode()

    def problem(self, call: Call) -> str | None:
        """Why ``call`` is not authenticated (None when it is). Two values (the right key
        and a wrong one, say) are refused: which one counts would depend on the proxy."""
        values = call.values("authorization")
        if len(values) > 1:
            return DUPLICATED
        return None if values and self.accepts(values[0]) else MISSING_OR_WRONG

    def accepts(self, value: Any) -> bool:
        """True for ``Bearer <key>`` (any case of the scheme) with the right key."""
        if not isinstance(value, str):
            return False
        scheme, _, key = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            key.strip().encode(), self._expected
        )


class ApiKeyAuth(Link):
    """Every call but health needs the key; a refused call never reads its request."""

    def __init__(self, key: ApiKey) -> None:
        self._key = key

    def wrap(self, call: Call, inner: Behavior) -> Behavior:
        if call.service == HEALTH_SERVICE:
            return inner
        problem = self._key.problem(call)
        if problem is None:
            return inner
        error = Unauthenticated(problem)

        async def denied(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await abort(context, error)
            yield  # pragma: no cover - makes this an async generator

        return denied


class HealthWatchLimit(Link):
    """At most ``limit`` health Watch streams without the key at a time (0 = no limit).

    Without an API key configured every Watch counts. The count lives on the event loop
    (links run there only), so it needs no lock.
    """

    def __init__(self, limit: int, key: ApiKey | None) -> None:
        self.limit = limit
        self._key = key
        self.active = 0

    def wrap(self, call: Call, inner: Behavior) -> Behavior:
        if call.method != WATCH_METHOD or not self.limit:
            return inner
        if self._key is not None and self._key.problem(call) is None:
            return inner
        error = ResourceExhausted(
            f"{self.limit} health Watch streams without an API key are open already "
            "(--max-health-watches); poll with Check, or send the key"
        )

        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.active >= self.limit:
                await abort(context, error)
            self.active += 1
            try:
                async for response in inner(request, context):
                    yield response
            finally:
                self.active -= 1

        return limited
