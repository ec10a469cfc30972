"""Structured output through the real server on SmolLM2: every output of a constraint is
valid (checked with a JSON Schema validator, ``re.fullmatch``, the choice list), alone
and in a busy batch, greedy and sampled, streamed or whole; a bad constraint is
INVALID_ARGUMENT naming its field, and the server keeps serving."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import jsonschema
import pytest
import zopilot_client as zc
from cli_tools import run_cli
from support import engine_idle, field_violations
from zopilot_client.pb import generation_pb2 as pb

ASK = "Describe one example as JSON."
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "role": {"enum": ["engineer", "designer", "manager"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}
ORDER = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "maxLength": 8},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 9},
                },
                "required": ["sku", "quantity"],
                "additionalProperties": False,
            },
        },
        "total": {"type": "number", "minimum": 0, "maximum": 1000},
        "shipping": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 16},
                "express": {"type": "boolean"},
            },
            "required": ["city", "express"],
            "additionalProperties": False,
        },
    },
    "required": ["id", "items", "total", "shipping"],
    "additionalProperties": False,
}
SCHEMAS = {"person": PERSON, "order": ORDER}
CHOICES = ["positive", "negative", 'neutral "meh"', "ça va"]
CODE = r"[A-Z]{3}-[0-9]{4}"


def chat(content: str = ASK, max_new_tokens: int = 160, **fields: Any) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        messages=[pb.ChatMessage(role="user", content=content)],
        max_new_tokens=max_new_tokens,
        **fields,
    )


def sampled(**fields: Any) -> dict[str, Any]:
    return {"temperature": 0.9, "top_p": 0.95, "seed": 7, **fields}


def assert_complete(response: pb.GenerateResponse) -> None:
    assert response.finish_reason == pb.FINISH_REASON_CONSTRAINT, response
    assert not response.incomplete


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@pytest.mark.parametrize("sampling", [{}, sampled()], ids=["greedy", "sampled"])
def test_outputs_validate_against_their_schema(smollm2_stub, name, sampling) -> None:
    schema = SCHEMAS[name]
    reply = smollm2_stub.Generate(chat(json_schema=json.dumps(schema), **sampling), timeout=120)
    jsonschema.validate(json.loads(reply.text), schema)
    assert_complete(reply)


def test_regex_and_choice_outputs_match_fully(smollm2_stub) -> None:
    code = smollm2_stub.Generate(chat("Invent a product code.", regex=CODE), timeout=60)
    assert re.fullmatch(CODE, code.text), code.text
    assert_complete(code)
    review = "Is this review happy? 'Great phone!'"
    for sampling in ({}, sampled(seed=3)):
        request = chat(review, choice=pb.Choice(options=CHOICES), **sampling)
        reply = smollm2_stub.Generate(request, timeout=60)
        assert reply.text in CHOICES
        assert_complete(reply)
    ask = 'Give a JSON object with the key "city" set to "Paris".'
    anything = smollm2_stub.Generate(chat(ask, json_object=True), timeout=60)
    assert isinstance(json.loads(anything.text), dict), anything.text
    assert_complete(anything)


def test_streamed_deltas_concatenate_to_the_valid_document(smollm2_stub) -> None:
    request = chat(json_schema=json.dumps(PERSON), return_token_details=True, top_n_tokens=3)
    chunks = list(smollm2_stub.GenerateStream(request, timeout=120))
    text = "".join(c.text for c in chunks)
    jsonschema.validate(json.loads(text), PERSON)
    assert_complete(chunks[-1])
    assert all(not c.finish_reason for c in chunks[:-1])
    tokens = [t for c in chunks for t in c.tokens]
    assert len(tokens) == chunks[-1].usage.generated_tokens
    # Alternatives are only tokens the schema allowed: never an impossible (-inf) one.
    assert all(alt.logprob > float("-inf") for t in tokens for alt in t.top_tokens)
    assert any(len(t.top_tokens) < 3 for t in tokens), "forced positions offer fewer options"


def test_a_constrained_request_decodes_the_same_in_a_busy_batch(smollm2_stub) -> None:
    constrained = [
        chat(json_schema=json.dumps(PERSON)),
        chat("Invent a product code.", regex=CODE),
        chat(json_schema=json.dumps(ORDER), **sampled(seed=11)),
    ]
    free = [chat("Write a haiku about rain.", max_new_tokens=40) for _ in range(3)]
    alone = [smollm2_stub.Generate(r, timeout=120) for r in constrained]
    with ThreadPoolExecutor(len(constrained) + len(free)) as pool:
        futures = [pool.submit(smollm2_stub.Generate, r, timeout=180) for r in constrained + free]
        together = [f.result() for f in futures]
    for single, batched in zip(alone, together, strict=False):
        assert batched.text == single.text
        assert_complete(batched)
    for reply in together[len(constrained) :]:
        assert reply.finish_reason != pb.FINISH_REASON_CONSTRAINT
        assert not reply.incomplete  # no constraint, nothing to be incomplete


def test_a_constraint_cut_short_says_incomplete(smollm2_stub) -> None:
    short = smollm2_stub.Generate(chat(json_schema=json.dumps(ORDER), max_new_tokens=6), timeout=60)
    assert short.finish_reason == pb.FINISH_REASON_LENGTH
    assert short.incomplete
    assert short.text.startswith('{"id": "')
    stopped = smollm2_stub.Generate(
        chat(json_schema=json.dumps(PERSON), stop_sequences=['"age"']), timeout=60
    )
    assert stopped.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert stopped.incomplete


BAD_CONSTRAINTS = [
    ({"json_schema": '{"type": "nope"}'}, "json_schema", "Invalid type"),
    ({"json_schema": '{"type": "object"'}, "json_schema", "not valid JSON"),
    ({"json_schema": '["a"]'}, "json_schema", "must be a JSON object"),
    ({"json_schema": "[" * 40 + "]" * 40}, "json_schema", "nested deeper than 32"),
    ({"json_schema": json.dumps({"enum": ["x" * 70000]})}, "json_schema", "--max-constraint-bytes"),
    ({"regex": "(unclosed"}, "regex", "unclosed group"),
    ({"regex": ""}, "regex", "is required"),
    ({"choice": pb.Choice()}, "choice.options", "is required"),
    ({"choice": pb.Choice(options=["yes", ""])}, "choice.options", "index 1"),
    ({"choice": pb.Choice(options=["y" * 40000, "n" * 40000])}, "choice.options", "65536"),
    ({"json_object": False}, "json_object", "must be true"),
]


@pytest.mark.parametrize(("fields", "field", "words"), BAD_CONSTRAINTS)
def test_a_bad_constraint_is_invalid_argument_naming_its_field(
    smollm2_stub, fields, field, words
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        smollm2_stub.Generate(
            pb.GenerateRequest(prompt="x", max_new_tokens=4, **fields), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(info.value)
    assert list(violations) == [field]
    assert words in violations[field]


def test_a_grammar_that_outgrows_the_engine_ends_its_row_only(smollm2_stub) -> None:
    """a{1000000} compiles lazily and hits llguidance's lexer limit at the first token:
    that stream ends with INVALID_ARGUMENT; a stream sharing the batch is unaffected."""
    with ThreadPoolExecutor(2) as pool:
        free = pool.submit(smollm2_stub.Generate, chat("Say hi.", max_new_tokens=20), timeout=120)
        hostile = pool.submit(
            lambda: list(smollm2_stub.GenerateStream(chat(regex="a{1000000}"), timeout=120))
        )
        with pytest.raises(grpc.RpcError) as info:
            hostile.result()
        assert free.result().usage.generated_tokens > 0
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "regex" in field_violations(info.value)
    assert "grammar engine" in info.value.details()


def test_cancelled_and_concurrent_distinct_constraints(smollm2_server, smollm2_stub) -> None:
    """A constrained stream cancelled mid-document leaves the batch; many distinct
    schemas compiled at once (more than fit one step) each get their own grammar."""
    stream = smollm2_stub.GenerateStream(chat(json_schema=json.dumps(ORDER)), timeout=120)
    assert next(stream).text  # the first delta of the document
    stream.cancel()
    assert engine_idle(smollm2_server)
    schemas = [
        {
            "type": "object",
            "properties": {f"k{i}": {"const": i}},
            "required": [f"k{i}"],
            "additionalProperties": False,
        }
        for i in range(10)
    ]
    with ThreadPoolExecutor(len(schemas)) as pool:
        replies = list(
            pool.map(
                lambda s: smollm2_stub.Generate(chat(json_schema=json.dumps(s)), timeout=180),
                schemas,
            )
        )
    assert [json.loads(r.text) for r in replies] == [{f"k{i}": i} for i in range(10)]


def test_model_info_says_constraints_are_available(smollm2_stub) -> None:
    info = smollm2_stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.constrained_decoding
    assert info.constraint_engine.startswith("llguidance ")
    assert info.max_constraint_bytes == 65536


# ------------------------------------------------------------------ client and CLI


def test_the_client_takes_a_schema_mapping_and_parses_the_result(smollm2_server) -> None:
    messages = [zc.ChatMessage("user", ASK)]
    with zc.Client(smollm2_server.target, timeout=120) as client:
        result = client.generate(messages, json_schema=PERSON, max_new_tokens=160)
        jsonschema.validate(result.json(), PERSON)
        assert result.finish_reason is zc.FinishReason.CONSTRAINT
        assert not result.incomplete
        with client.generate_stream(messages, choice=CHOICES) as stream:
            assert "".join(chunk.text for chunk in stream) in CHOICES
        assert stream.result is not None and stream.result.text in CHOICES
        cut = client.generate(messages, json_schema=ORDER, max_new_tokens=4)
        assert cut.incomplete and cut.finish_reason is zc.FinishReason.LENGTH
        with pytest.raises(ValueError):
            cut.json()
        with pytest.raises(TypeError, match="at most one of"):
            client.generate("x", regex="a", json_object=True)
        info = client.model_info()
        assert info.constrained_decoding and info.max_constraint_bytes == 65536


def test_the_cli_flags_send_each_constraint(smollm2_server, tmp_path) -> None:
    schema_file = tmp_path / "person.json"
    schema_file.write_text(json.dumps(PERSON))
    target = smollm2_server.target
    result = run_cli("generate", "--chat", ASK, "--json-schema", str(schema_file), target=target)
    assert result.returncode == 0, result.stderr
    jsonschema.validate(json.loads(result.stdout), PERSON)
    choice = run_cli(
        "generate", "--chat", "Happy? 'Great!'", "--choice", "yes", "--choice", "no", target=target
    )
    assert choice.stdout.strip() in {"yes", "no"}, choice.stderr
    regex = run_cli("generate", "--chat", "A code:", "--regex", CODE, "--json", target=target)
    reply = json.loads(regex.stdout)
    assert re.fullmatch(CODE, reply["text"]) and reply["finish_reason"] == "constraint"
    short = run_cli(
        "generate", "--chat", ASK, "--json-object", "--max-new-tokens", "3", target=target
    )
    assert short.returncode == 0
    assert "the output is incomplete" in short.stderr
    both = run_cli("generate", "x", "--regex", "a", "--json-object", target=target)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    missing = run_cli("generate", "x", "--json-schema", str(tmp_path / "nope.json"), target=target)
    assert missing.returncode == 2 and "cannot read the schema file" in missing.stderr
