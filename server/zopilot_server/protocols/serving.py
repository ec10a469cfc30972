"""Registering the other protocols' servicers on the zopilot server (app.py calls this).

The generated ``add_*_to_server`` functions register request deserializers that raise
on bytes that are not a valid message; grpc.aio answers that with UNKNOWN and a
traceback. Unary methods are covered by the chain's MalformedRequests link; the one
request-streaming method (ModelStreamInfer) multiplexes independent requests, so its
deserializer is made lenient here and the servicer answers a bad message with an error
response while the stream goes on (the chain leaves ``SELF_PARSING_STREAMS`` to it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from ..config import ServerConfig
from ..errors import lenient
from ..generation.api.servicer import GenerationServicer
from . import kserve, tgis, vllm_engine
from .pb.fmaas import generation_pb2_grpc as tgis_grpc
from .pb.inference import grpc_service_pb2_grpc as kserve_grpc
from .pb.vllm import vllm_engine_pb2_grpc as vllm_grpc

SELF_PARSING_STREAMS = frozenset({"/inference.GRPCInferenceService/ModelStreamInfer"})

_SERVICERS: dict[str, tuple[str, type[Any], Callable[[Any, Any], None]]] = {
    "kserve": (
        kserve.SERVICE,
        kserve.KServeServicer,
        kserve_grpc.add_GRPCInferenceServiceServicer_to_server,
    ),
    "tgis": (tgis.SERVICE, tgis.TgisServicer, tgis_grpc.add_GenerationServiceServicer_to_server),
    "vllm": (
        vllm_engine.SERVICE,
        vllm_engine.VllmEngineServicer,
        vllm_grpc.add_VllmEngineServicer_to_server,
    ),
}


def add_protocols(
    server: grpc.aio.Server, config: ServerConfig, generation: GenerationServicer
) -> tuple[str, ...]:
    """Add the servicers ``--protocols`` names besides zopilot; return their service names
    (for health and reflection)."""
    names = []
    for protocol, (service, servicer_type, add) in _SERVICERS.items():
        if protocol in config.protocol_set:
            add(servicer_type(config, generation), _LenientStreams(server))
            names.append(service)
    return tuple(names)


class _LenientStreams:
    """Stands in for the server while a generated ``add_*_to_server`` registers: the
    request-streaming handlers get a lenient deserializer, the rest pass unchanged."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: add_registered_method_handlers below registers both ways."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        handlers = {method: _lenient(handler) for method, handler in handlers.items()}
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, handlers),)
        )
        self._server.add_registered_method_handlers(service, handlers)


def _lenient(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if not handler.request_streaming:
        return handler
    return grpc.stream_stream_rpc_method_handler(
        handler.stream_stream,
        request_deserializer=lenient(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )
