"""json_fields / json_schema filled by the loaded model, its output constrained to the schema.

docstrange fills a schema with an LLM behind an Ollama server, which our offline workers
never reach; the label matching in fields.py is the offline stand-in. But the server has
an LLM in the same process: after the worker parsed the document (and matched labels, the
fallback), the model reads the document's markdown with an instruction and writes JSON
that structured output (generation/model/constraints.py) forces to follow the schema. The
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

from ...config import ServerConfig
from ...generation.api.requests import FIT_MARK, ChatTurn, RequestLimits, build_request
from ...generation.domain import (
    ConstraintKind,
    ConstraintUnavailable,
    EngineClosed,
    GenerationFailed,
    GenerationRequest,
    InvalidConstraint,
    ModelLoading,
    PromptTooLong,
    QueueFull,
)
from ...generation.engine import GenerationEngine, complete_generation
from ..domain import LABEL_MATCH_WARNING, FieldExtraction, OutputFormat, ParseOutcome
from .validation import DocumentRequest

log = logging.getLogger(__name__)

SYSTEM = (
    "You extract data from documents. Answer with JSON that follows the schema, copying "
    "values exactly as they appear in the document; use null for a value the document "
    "does not give."
)
# Room for the JSON answer; also bounds the time a fill can take.
MAX_ANSWER_TOKENS = 512
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
                raise ModelLoading
            if mode is FieldExtraction.MODEL:
                raise ConstraintUnavailable(
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
    ) -> tuple[GenerationRequest, list[str]]:
        """The request for the fill: the document cut to what the model's context leaves
        (tokenized once, by generation/api/requests.py)."""
        loaded = engine.loaded
        schema_text = json.dumps(schema, ensure_ascii=False)
        size, limit = len(schema_text.encode()), self._config.max_constraint_bytes
        if size > limit:  # json_fields can make a schema grow past what the client sent
            raise InvalidConstraint(
                "json_schema", f"is {size} bytes; the limit is {limit} (--max-constraint-bytes)"
            )
        limits = RequestLimits(
            max_new_tokens=min(MAX_ANSWER_TOKENS, self._config.max_new_tokens_limit),
            time_remaining_s=time_remaining,
            deadline_margin_s=self._config.deadline_margin_ms / 1000,
        )
        system, task = _turns(FIT_MARK, schema_text)
        prompt: str | list[ChatTurn] = (
            [ChatTurn("system", system), ChatTurn("user", task)]
            if loaded.has_chat_template
            else f"{system}\n\n{task}\nJSON: "
        )
        try:
            request, fitted = build_request(
                loaded,
                prompt,
                limits,
                fit=markdown,
                constraint=(ConstraintKind.JSON_SCHEMA, schema_text),
                constraints=engine.constraints,
                request_id=document.request_id,
            )
        except PromptTooLong as exc:
            raise InvalidConstraint(
                "json_schema", "the schema leaves no room for the document in the context"
            ) from exc
        notes: list[str] = []
        if fitted.cut:
            notes.append(
                f"json: the model read the first {fitted.kept_chars} of {fitted.total_chars} "
                f"characters of the document (its context is {loaded.max_context_length} tokens)"
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
