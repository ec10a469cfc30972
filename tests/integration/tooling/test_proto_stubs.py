"""The committed stubs match protos/: a proto edit without `make proto` fails here."""

from __future__ import annotations

import pytest
from support import REPO, load_script

COMMITTED = REPO / "client" / "zopilot_client" / "pb"


def test_generated_stubs_are_up_to_date(tmp_path):
    fresh = load_script("gen_proto").generate(tmp_path)
    assert fresh, "nothing was generated"
    stale = [
        p.name
        for p in fresh
        if not (COMMITTED / p.name).is_file() or (COMMITTED / p.name).read_bytes() != p.read_bytes()
    ]
    assert not stale, f"stale generated files {stale}: run `make proto` and commit the result"


def test_protocol_stubs_are_up_to_date(tmp_path):
    """The KServe / TGIS stubs (server-only, private descriptor pool) match protos/."""
    committed = REPO / "server"
    fresh = load_script("gen_proto").generate_protocols(tmp_path)
    assert len(fresh) >= 7, fresh
    stale = [
        str(p.relative_to(tmp_path))
        for p in fresh
        if (committed / p.relative_to(tmp_path)).read_bytes() != p.read_bytes()
    ]
    assert not stale, f"stale generated files {stale}: run `make proto` and commit the result"


def test_protocol_stubs_use_their_own_descriptor_pool():
    from google.protobuf import descriptor_pool
    from zopilot_server.protocols import pb
    from zopilot_server.protocols.pb.inference import grpc_service_pb2

    name = "inference.ModelInferRequest"
    assert pb.POOL.FindMessageTypeByName(name) is grpc_service_pb2.ModelInferRequest.DESCRIPTOR
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindFileByName(grpc_service_pb2.DESCRIPTOR.name)


def test_every_enum_starts_with_unspecified():
    from zopilot_client.pb import documents_pb2, generation_pb2

    for module in (generation_pb2, documents_pb2):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            assert enum.values[0].number == 0
            assert enum.values[0].name.endswith("_UNSPECIFIED"), enum.name


def test_optional_where_unset_differs_from_zero():
    from zopilot_client.pb import generation_pb2

    fields = generation_pb2.GenerateRequest.DESCRIPTOR.fields_by_name
    for name in ("temperature", "top_p", "seed", "max_new_tokens", "top_k"):
        assert fields[name].has_presence, name
