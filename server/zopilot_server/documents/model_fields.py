"""json_fields / json_schema filled by the loaded model, its output constrained to the schema.

docstrange fills a schema with an LLM behind an Ollama server, which our offline workers
never reach; the label matching in fields.py is the offline stand-in. But the server has
an LLM in the same process: after the worker parsed the document (and matched labels, the
fallback), the model reads the document's markdown with an instruction and writes JSON
that structured output (generation/constraints.py) forces to follow the schema. The
document is cut to what fits the model's context, with a warning. Whether the model or
the labels filled the fields is in DocumentMetadata.field_extraction.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zopilot_client.pb import generation_pb2 as gen_pb

from ..config import ServerConfig
from ..errors import FailedPrecondition, Unavailable
from ..generation.domain import (
    EngineClosed,
    GenerationFailed,
    InvalidConstraint,
    QueueFull,
)
from ..generation.engine import GenerationEngine, complete_generation
from ..generation.validation import CHARS_PER_TOKEN_BOUND, encode, to_generation_request
from .domain import LABEL_MATCH_WARNING, FieldExtraction, OutputFormat, ParseOutcome
from .validation import DocumentRequest

log = logging.getLogger(__name__)

SYSTEM = (
    "You extract data from documents. Answer with JSON that follows the schema, copying "
    "values exactly as they appear in the document; use null for a value the document "
    "does not give."
)
# Room for the JSON answer; also bounds the time a fill can take.
MAX_ANSWER_TOKENS = 512
_MARGIN_TOKENS = 16  # decoding a cut document and encoding it again can shift a few
_FIELD_MAX_CHARS = 500
EngineSource = Callable[[], GenerationEngine | None]


@dataclass(frozen=True)
class FieldPlan:
    """How one DocumentParse fills its fields, decided once before parsing: the engine
    may finish loading meanwhile, and the parser must already have been asked for the
    markdown the model reads."""

    document: DocumentRequest
    parse_request: DocumentRequest  # what the parser gets (the markdown added if needed)
    engine: GenerationEngine | None  # the model that fills the fields; None = labels
    labels_because: str = ""  # AUTO without the model: the warning that says why


class ModelFieldFiller:
    """Decides, per request, whether the model fills the fields, and does it."""

    def __init__(self, config: ServerConfig, engine: EngineSource | None = None) -> None:
        self._config = config
        self._engine = engine or (lambda: None)

    def plan(self, document: DocumentRequest) -> FieldPlan:
        """FIELD_EXTRACTION_MODEL without a usable model fails here, before any parsing."""
        mode = document.field_extraction
        if not document.wants_fields or mode is FieldExtraction.LABELS:
            return FieldPlan(document, document, None)
        engine = self._engine()
        usable = engine is not None and engine.constraints.available
        if not usable:
            if mode is FieldExtraction.MODEL and engine is None:
                raise Unavailable("the model is still loading; retry shortly")
            if mode is FieldExtraction.MODEL:
                raise FailedPrecondition(
                    "field_extraction MODEL needs constrained decoding, which this server "
                    "lacks (GetModelInfo.constrained_decoding is false)"
                )
            why = "is still loading" if engine is None else "has no constrained decoding"
            return FieldPlan(document, document, None, f"json: the model {why}; {_LABELS}")
        parse_request = document
        if OutputFormat.MARKDOWN not in document.formats:
            formats = (*document.formats, OutputFormat.MARKDOWN)
            parse_request = dataclasses.replace(document, formats=formats)
        return FieldPlan(document, parse_request, engine)

    async def fill(
        self, plan: FieldPlan, outcome: ParseOutcome, time_remaining: float | None
    ) -> ParseOutcome:
        """The outcome with model-filled JSON, or the labels' with a warning saying why."""
        document, engine = plan.document, plan.engine
        if not document.wants_fields:
            return outcome
        outcome.field_extraction = "labels"
        if engine is None:
            if plan.labels_because:
                outcome.warnings.append(plan.labels_because)
            return outcome
        markdown = outcome.outputs.get(OutputFormat.MARKDOWN, "")
        if OutputFormat.MARKDOWN not in document.formats:
            outcome.outputs.pop(OutputFormat.MARKDOWN, None)
        try:
            data, notes = await self._generate(engine, document, markdown, time_remaining)
        except (InvalidConstraint, QueueFull, EngineClosed, GenerationFailed) as exc:
            if document.field_extraction is FieldExtraction.MODEL:
                raise
            outcome.warnings.append(f"json: the model could not fill the fields ({exc}); {_LABELS}")
            return outcome
        outcome.warnings.extend(notes)
        if data is None:  # cut short: the notes say so, and the labels' JSON stays
            return outcome
        outcome.outputs[OutputFormat.JSON] = json.dumps(
            _body(document, data, engine.loaded.model_id), ensure_ascii=False
        )
        outcome.warnings[:] = [w for w in outcome.warnings if w != LABEL_MATCH_WARNING]
        outcome.field_extraction = "model"
        return outcome

    async def _generate(
        self,
        engine: GenerationEngine,
        document: DocumentRequest,
        markdown: str,
        time_remaining: float | None,
    ) -> tuple[Any, list[str]]:
        """The model's JSON (None when its output was cut short) and warnings."""
        schema = target_schema(document)
        request, notes = await asyncio.to_thread(
            self._request, engine, document, markdown, schema, time_remaining
        )
        chunk = await complete_generation(engine, request)
        done = chunk.completion
        assert done is not None
        if done.incomplete:
            reason = done.finish_reason.name
            notes.append(f"json: the model's answer was cut short ({reason}); {_LABELS}")
            return None, notes
        log.info("document %s: fields filled by the model", document.request_id)
        return json.loads(chunk.text), notes

    def _request(
        self,
        engine: GenerationEngine,
        document: DocumentRequest,
        markdown: str,
        schema: dict[str, Any],
        time_remaining: float | None,
    ) -> tuple[Any, list[str]]:
        """The GenerateRequest for the fill, the document cut to the model's context."""
        loaded = engine.loaded
        schema_text = json.dumps(schema, ensure_ascii=False)
        answer = min(MAX_ANSWER_TOKENS, self._config.max_new_tokens_limit)
        room = loaded.max_context_length - answer - _MARGIN_TOKENS
        tokenizer = loaded.tokenizer
        room -= len(encode(tokenizer, _render(loaded, "", schema_text), add_special_tokens=False))
        if room <= 0:
            raise InvalidConstraint(
                "json_schema", "the schema leaves no room for the document in the context"
            )
        notes: list[str] = []
        # Characters first: tokenizing a 30 MiB text to keep its first 2000 tokens is waste.
        head = markdown[: room * CHARS_PER_TOKEN_BOUND]
        ids = encode(tokenizer, head, add_special_tokens=False)
        if len(ids) > room or len(head) < len(markdown):
            head = tokenizer.decode(ids[:room], skip_special_tokens=True)
            notes.append(
                f"json: the model read the first {len(head)} of {len(markdown)} characters "
                f"of the document (its context is {loaded.max_context_length} tokens)"
            )
        message = gen_pb.GenerateRequest(
            max_new_tokens=answer, json_schema=schema_text, request_id=document.request_id
        )
        if loaded.has_chat_template:
            system, task = _turns(head, schema_text)
            message.messages.add(role="system", content=system)
            message.messages.add(role="user", content=task)
        else:
            message.prompt = _render(loaded, head, schema_text)
        request = to_generation_request(
            message,
            loaded=loaded,
            config=self._config,
            constraints=engine.constraints,
            grpc_time_remaining=time_remaining,
        )
        return request, notes


_LABELS = "fields were matched by their labels instead"


def target_schema(document: DocumentRequest) -> dict[str, Any]:
    """The schema the model's answer must follow: the client's, with json_fields added as
    string properties; json_fields alone give an object of nullable strings."""
    names = list(document.json_fields)
    field_schema = {"type": ["string", "null"], "maxLength": _FIELD_MAX_CHARS}
    if document.json_schema is None:
        return {
            "type": "object",
            "properties": {name: field_schema for name in names},
            "required": names,
            "additionalProperties": False,
        }
    schema = copy.deepcopy(document.json_schema)
    properties = schema.get("properties")
    if names and isinstance(properties, dict):
        for name in names:
            properties.setdefault(name, field_schema)
        required = schema.setdefault("required", [])
        if isinstance(required, list):
            required.extend(n for n in names if n not in required)
    return schema


def _turns(markdown: str, schema_text: str) -> tuple[str, str]:
    """The system and user turns of the fill."""
    task = (
        f"Document:\n{markdown}\n\nJSON schema:\n{schema_text}\n\n"
        "Extract the data from the document as JSON."
    )
    return SYSTEM, task


def _render(loaded: Any, markdown: str, schema_text: str) -> str:
    """The prompt text: the chat turns through the template, or plain text without one."""
    system, task = _turns(markdown, schema_text)
    if not loaded.has_chat_template:
        return f"{system}\n\n{task}\nJSON: "
    return loaded.tokenizer.apply_chat_template(
        [{"role": "system", "content": system}, {"role": "user", "content": task}],
        tokenize=False,
        add_generation_prompt=True,
    )


def _body(document: DocumentRequest, data: Any, model_id: str) -> dict[str, Any]:
    """The JSON output, shaped like the label matcher's (and docstrange's) results."""
    extractor = f"zopilot-model:{model_id}"
    if document.json_schema is None:
        return {
            "extracted_fields": data,
            "requested_fields": list(document.json_fields),
            "format": "model_specified_fields",
            "extractor": extractor,
        }
    return {
        "extracted_data": data,
        "schema": document.json_schema,
        "format": "model_json_schema",
        "extractor": extractor,
    }
