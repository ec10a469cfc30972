"""The zopilot.v1.Documents servicer (placeholder until issue 4 lands)."""

from __future__ import annotations

import grpc
from zopilot_client.pb import documents_pb2 as pb
from zopilot_client.pb import documents_pb2_grpc as pb_grpc

from ..config import ServerConfig
from ..errors import ServiceError, rpc_errors


class DocumentsServicer(pb_grpc.DocumentsServicer):
    """Parses documents; ``start`` / ``close`` manage its worker processes."""

    def __init__(self, config: ServerConfig) -> None:
        self._config = config

    async def start(self) -> None:
        """Start the parser workers (none yet)."""

    async def close(self) -> None:
        """Stop the parser workers (none yet)."""

    @rpc_errors
    async def DocumentParse(
        self, request: pb.DocumentParseRequest, context: grpc.aio.ServicerContext
    ) -> pb.DocumentParseResponse:
        raise ServiceError(
            "DocumentParse is not implemented yet", code=grpc.StatusCode.UNIMPLEMENTED
        )
