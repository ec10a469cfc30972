"""What the KServe v2 and TGIS adapters share: the served model's name, and running a
translated request through zopilot.v1's own validation.

Each adapter translates its protocol's request into a ``zopilot.v1.GenerateRequest`` and
hands it to ``GenerationServicer.domain_request``, so every rule and limit (lengths,
ranges, stop sequences, input size, context fit, deadlines) is the one zopilot.v1 applies;
only the field names in the error are translated back into the client's protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from zopilot_client.pb import generation_pb2 as pb

from ..config import ServerConfig
from ..errors import FieldViolation, InvalidArgument, ServiceError
from ..generation.api.servicer import GenerationServicer, served_model_name
from ..generation.domain import GenerationRequest
from ..generation.engine import GenerationEngine


class NotFound(ServiceError):
    """A model name this server does not serve."""

    code = grpc.StatusCode.NOT_FOUND


class ProtocolAdapter:
    """Base of the protocol servicers: the zopilot.v1 servicer they delegate to."""

    def __init__(self, config: ServerConfig, generation: GenerationServicer) -> None:
        self._config = config
        self._generation = generation

    def ready_engine(self) -> GenerationEngine:
        """The engine, or UNAVAILABLE while the model loads (as zopilot.v1 answers)."""
        return self._generation.ready_engine()

    def model_name(self) -> str:
        """The served model name; UNAVAILABLE while the model loads (it may come from the
        loaded model's directory)."""
        return served_model_name(self._config, self.ready_engine().loaded)

    def check_model(self, name: str, field: str, *, allow_empty: bool = False) -> str:
        """``name`` if it is the served model (or empty where the protocol allows it);
        NOT_FOUND otherwise, naming what is served."""
        served = self.model_name()
        if name == served or (allow_empty and not name):
            return served
        shown = name if len(name) <= 64 and name.isprintable() else "(that name)"
        raise NotFound(f"{field}: unknown model {shown!r}; this server serves {served!r}")

    async def domain_request(
        self,
        request: pb.GenerateRequest,
        context: grpc.aio.ServicerContext,
        field_names: Mapping[str, str],
        *,
        input_ids: Sequence[int] | None = None,
    ) -> tuple[GenerationEngine, GenerationRequest]:
        """zopilot.v1's validation; violations name the client's own fields."""
        try:
            return await self._generation.domain_request(request, context, input_ids=input_ids)
        except InvalidArgument as error:
            raise renamed(error, field_names) from None


def renamed(error: InvalidArgument, field_names: Mapping[str, str]) -> InvalidArgument:
    """``error`` with each violation's zopilot.v1 field named as the client sent it."""

    def rename(field: str) -> str:
        head, dot, rest = field.partition(".")
        base, bracket, index = head.partition("[")
        if base in field_names:
            return field_names[base] + bracket + index + dot + rest
        return field

    return InvalidArgument(
        [FieldViolation(rename(v.field), v.description) for v in error.violations]
    )


def server_version() -> str:
    """The installed zopilot-server version ("0" running from a checkout)."""
    from importlib import metadata

    try:
        return metadata.version("zopilot-server")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0"
