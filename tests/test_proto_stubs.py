"""The committed stubs match protos/: a proto edit without `make proto` fails here."""

from __future__ import annotations

from pathlib import Path

from support import load_script

REPO = Path(__file__).resolve().parents[1]
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
