"""DocumentParse json_schema / json_fields filled by the loaded model (structured output),
the label matching as the fallback and on request, and which one was used."""

from __future__ import annotations

import json
import re

import grpc
import pytest
import zopilot_client as zc
from cli_tools import run_cli
from documents_calls import INVOICE_SCHEMA, invoice_docx, parse
from zopilot_client.pb import documents_pb2 as pb


def test_the_model_fills_the_schema_from_an_invoice(smollm2_server) -> None:
    reply = parse(
        smollm2_server, invoice_docx(), "invoice.docx", json_schema=json.dumps(INVOICE_SCHEMA)
    )
    body = json.loads(reply.json)
    assert body["extracted_data"] == {
        "invoice_number": "INV-2024-017",
        "customer": "Acme GmbH",  # no "Customer:" label: the labels find nothing here
        "date": "2024-03-05",
        "total": 1250.0,
    }
    assert body["extractor"] == "zopilot-model:SmolLM2-135M-Instruct"
    assert reply.metadata.field_extraction == "model"
    assert not reply.HasField("markdown"), "the markdown the model read is not sent unasked"
    assert not any("labels" in w for w in reply.warnings)


def test_json_fields_alone_become_nullable_strings(smollm2_server) -> None:
    reply = parse(
        smollm2_server, invoice_docx(), "invoice.docx", json_fields=["invoice number", "date"]
    )
    body = json.loads(reply.json)
    assert body["extracted_fields"] == {"invoice number": "INV-2024-017", "date": "2024-03-05"}
    assert body["requested_fields"] == ["invoice number", "date"]
    assert reply.metadata.field_extraction == "model"


def test_labels_on_request_and_when_the_model_cannot_follow_the_schema(smollm2_server) -> None:
    labels = parse(
        smollm2_server,
        invoice_docx(),
        "invoice.docx",
        json_schema=json.dumps(INVOICE_SCHEMA),
        field_extraction=pb.FIELD_EXTRACTION_LABELS,
    )
    assert labels.metadata.field_extraction == "labels"
    assert json.loads(labels.json)["extracted_data"]["customer"] is None
    unsupported = {"type": "object", "properties": {"total": {"not": {"type": "string"}}}}
    fallback = parse(smollm2_server, invoice_docx(), "i.docx", json_schema=json.dumps(unsupported))
    assert fallback.metadata.field_extraction == "labels"
    assert any("the model could not fill the fields" in w and "not" in w for w in fallback.warnings)
    with pytest.raises(grpc.RpcError) as strict:
        parse(
            smollm2_server,
            invoice_docx(),
            "i.docx",
            json_schema=json.dumps(unsupported),
            field_extraction=pb.FIELD_EXTRACTION_MODEL,
        )
    assert strict.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "json_schema" in strict.value.details()


def test_a_long_document_is_cut_to_the_context_with_a_warning(tiny_server) -> None:
    """The tiny model's context is 2048 tokens: a 40 000-character text does not fit."""
    text = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(800))
    reply = parse(tiny_server, text.encode(), "long.txt", json_fields=["Line 7"])
    cut = [
        re.match(r"json: the model read the first (\d+) of (\d+) characters", w)
        for w in reply.warnings
    ]
    read, total = next(map(int, m.groups()) for m in cut if m)
    assert read < total and total >= len(text) - 1, reply.warnings
    body = json.loads(reply.json)
    if reply.metadata.field_extraction == "labels":  # a random model may not finish
        assert any("cut short" in w for w in reply.warnings)
        assert body["extracted_fields"]["Line 7"].startswith("the quick brown fox")
    else:
        assert reply.metadata.field_extraction == "model"
        assert set(body["extracted_fields"]) == {"Line 7"}


def test_an_unknown_field_extraction_is_invalid_argument(tiny_server) -> None:
    with pytest.raises(grpc.RpcError) as info:
        parse(tiny_server, b"Total: 3", "t.txt", json_fields=["Total"], field_extraction=9)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "field_extraction" in info.value.details()


def test_the_client_and_cli_choose_the_extraction(tiny_server, tmp_path) -> None:
    schema = {"type": "object", "properties": {"total": {"type": "number"}}}
    with zc.Client(tiny_server.target, timeout=60) as client:
        document = client.parse_document(
            b"Total: 42.50", filename="t.txt", formats=["json"], json_schema=schema,
            field_extraction="labels",
        )  # fmt: skip
        assert json.loads(document.json)["extracted_data"] == {"total": 42.5}
        assert document.metadata.field_extraction == "labels"
        with pytest.raises(ValueError, match="'model' or 'labels'"):
            client.parse_document(b"x", filename="t.txt", field_extraction="llm")
    (tmp_path / "t.txt").write_text("Total: 42.50")
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    result = run_cli(
        "parse", str(tmp_path / "t.txt"), "--format", "json", "--schema",
        str(tmp_path / "schema.json"), "--field-extraction", "labels", target=tiny_server.target,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["extracted_data"] == {"total": 42.5}
