"""Server reflection that also serves the proto comments, so ``grpcurl describe`` shows them.

grpcio-reflection serializes descriptors from the runtime pool, and the generated
``_pb2`` modules carry descriptors without SourceCodeInfo, i.e. without comments. ``make
proto`` also writes a descriptor set with source info (``zopilot_v1.binpb``, next to the
stubs); for our own files we answer with those documented descriptors instead.

Bytes that are not a ServerReflectionRequest end the stream with INVALID_ARGUMENT, as for
every other method: the RPC chain's MalformedRequests link (rpc_chain.py) does it.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer
from grpc_reflection.v1alpha._base import BaseReflectionServicer

from .protocols import pb as protocols_pb

DESCRIPTOR_SET = "zopilot_v1.binpb"
# The other protocols' stubs live in their own descriptor pool (protocols/pb/__init__.py).
PROTOCOLS_DESCRIPTOR_SET = ("zopilot_server.protocols.pb", "protocols.binpb")
VLLM_DESCRIPTOR_SET = ("zopilot_server.protocols.pb.vllm", "vllm.binpb")
METHOD = "ServerReflectionInfo"


def documented_files() -> dict[str, bytes]:
    """Serialized FileDescriptorProtos with comments, by file name."""
    files = {}
    for package, name in (
        ("zopilot_client.pb", DESCRIPTOR_SET),
        PROTOCOLS_DESCRIPTOR_SET,
        VLLM_DESCRIPTOR_SET,
    ):
        data = resources.files(package).joinpath(name).read_bytes()
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(data)
        files.update({f.name: f.SerializeToString() for f in descriptor_set.file})
    return files


class DocumentedReflectionServicer(ReflectionServicer):
    """The standard v1alpha reflection service, with comments on our own files."""

    def __init__(self, service_names: tuple[str, ...]) -> None:
        super().__init__(service_names)
        self._documented = documented_files()
        self._protocols = BaseReflectionServicer(service_names, pool=protocols_pb.POOL)

    def _with_comments(self, response: Any) -> Any:
        files = response.file_descriptor_response.file_descriptor_proto
        for index, serialized in enumerate(files):
            name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
            if name in self._documented:
                files[index] = self._documented[name]
        return response

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        response = self._protocols._file_by_filename(request, filename)
        if response.HasField("error_response"):
            response = super()._file_by_filename(request, filename)
        return self._with_comments(response)

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        # The protocols' pool first: a process that also imported tritonclient has its
        # (other) inference.* files in the default pool.
        response = self._protocols._file_containing_symbol(request, fully_qualified_name)
        if response.HasField("error_response"):
            response = super()._file_containing_symbol(request, fully_qualified_name)
        return self._with_comments(response)


def enable(server: Any, service_names: tuple[str, ...]) -> None:
    """Register v1alpha reflection (the only version grpcio-reflection serves) for
    ``service_names``."""
    names = (*service_names, reflection.SERVICE_NAME)
    servicer = DocumentedReflectionServicer(names)
    handlers = {
        METHOD: grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    # Both registrations, as the generated add_ServerReflectionServicer_to_server does.
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(reflection.SERVICE_NAME, handlers),)
    )
    server.add_registered_method_handlers(reflection.SERVICE_NAME, handlers)
