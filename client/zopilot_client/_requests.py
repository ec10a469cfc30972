"""Keyword arguments to request messages: the one place that knows the request fields.

Generation parameters are named exactly like the GenerateRequest fields, so that an
``InvalidArgument.field_violations[i].field`` names the keyword argument to fix.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypedDict

# Unpack types the clients' ``**options: Unpack[GenerateOptions]``, in annotations only,
# so Python 3.10 needs no typing_extensions at run time.
if sys.version_info >= (3, 11):
    from typing import Unpack
elif TYPE_CHECKING:
    from typing_extensions import Unpack as Unpack

from ._results import ChatMessage, OutputFormat, PromptLike
from .pb import documents_pb2, generation_pb2


class GenerateParams(TypedDict, total=False):
    """Generation parameters (all optional; the server's defaults apply when left out).

    See ``protos/zopilot/v1/generation.proto`` for the exact semantics and ranges.
    """

    #: Echoed in every chunk and in the server's logs; the server makes one when empty.
    request_id: str
    #: Tokens to generate at most (1..ModelInfo.max_new_tokens_limit).
    max_new_tokens: int
    #: Tokens to generate before EOS may end generation.
    min_new_tokens: int
    #: 0 or unset: greedy decoding. Otherwise sampling temperature (0..100].
    temperature: float
    #: Nucleus sampling probability mass (0, 1].
    top_p: float
    #: Sample among the k most likely tokens only (0 = off).
    top_k: int
    #: 1.0 = off; > 1 discourages repetition.
    repetition_penalty: float
    #: Sampling seed, for reproducible sampling.
    seed: int
    #: Stop generating when one of these is produced (a single string is one sequence).
    stop_sequences: Sequence[str] | str
    #: Keep the matched stop sequence at the end of the text.
    include_stop_sequence: bool
    #: Keep generating after the end-of-sequence token.
    ignore_eos: bool
    #: Neither reuse other requests' cached prompt KV nor leave this prompt's for them
    #: (for callers who must not share: a prefix-cache hit shows in timing).
    skip_prefix_cache: bool
    #: Never draft tokens from this request's text (speculative decoding); the output
    #: is the same either way.
    skip_speculation: bool
    #: The LoRA adapter to generate with (``model_info().adapters``); "" = the base model.
    adapter: str
    #: Keep only the last N prompt tokens (0 = a too long prompt is an error).
    truncate_input_tokens: int
    #: Wall-clock limit for generation; ends with FinishReason.TIME_LIMIT, text kept.
    time_limit_ms: int
    #: Return id, text and logprob of every generated token.
    return_token_details: bool
    #: Also return this many most likely alternatives per position.
    top_n_tokens: int
    #: Tokenize special-token text in the prompt / message contents as plain text.
    special_tokens_as_text: bool
    #: Structured output (set at most one of the four): the text is one JSON value
    #: valid under this JSON Schema (text or a mapping).
    json_schema: str | Mapping[str, Any]
    #: Structured output: the whole text matches this regular expression.
    regex: str
    #: Structured output: the text is exactly one of these strings.
    choice: Sequence[str]
    #: Structured output: the text is one JSON object (any keys and values).
    json_object: bool


class CallOptions(TypedDict, total=False):
    """Per-call options; each overrides the client's setting for this call only."""

    #: Seconds until the call's deadline; None = no deadline. For streams the server
    #: stops shortly before the deadline and ends with FinishReason.TIME_LIMIT.
    timeout: float | None
    #: Extra metadata (headers) sent with this call.
    metadata: Mapping[str, str] | Sequence[tuple[str, str]]
    #: Wait for the server to become reachable instead of failing fast with Unavailable.
    wait_for_ready: bool


class GenerateOptions(GenerateParams, CallOptions, total=False):
    """Everything ``generate`` and ``generate_stream`` accept after the prompt."""


class TokenizeOptions(CallOptions, total=False):
    """What ``tokenize`` accepts after the text."""

    #: Add the tokenizer's special tokens (e.g. BOS) as generation would.
    add_special_tokens: bool
    #: Keep only the last N tokens (0 = all).
    truncate_input_tokens: int


class ParseOptions(CallOptions, total=False):
    """What ``parse_document`` accepts after the document."""

    #: Output formats to return ("markdown", "html", "text", "json", "csv"); default markdown.
    formats: Sequence[OutputFormat | str] | OutputFormat | str
    #: The file name; its extension selects the parser. Default: the path's name.
    filename: str
    #: MIME type, used when the file name has no extension.
    mime_type: str
    #: JSON output only: extract just these fields.
    json_fields: Sequence[str]
    #: JSON output only: a JSON schema (as text or a mapping) the data should follow.
    json_schema: str | Mapping[str, Any]
    #: How the fields are filled: "model" (the loaded model), "labels" (matched by
    #: label), or unset (the model when it can, else labels).
    field_extraction: str
    #: Echoed in the response and in the server's logs.
    request_id: str
    #: Also cut the markdown into chunks of at most this many tokens (``chunks``).
    chunk_tokens: int
    #: Tokens of the previous chunk's last words repeated at the start of the next.
    chunk_overlap_tokens: int
    #: The tokenizer that counts: a model id installed on the server; default the
    #: served model's.
    chunk_tokenizer: str
    #: E-mail only: also parse the attachments (else they are only listed).
    parse_attachments: bool
    #: csv output: prefix formula-looking cells (=, +, -, @ ...) with ' (OWASP).
    csv_neutralize_formulas: bool


CALL_OPTIONS = frozenset(CallOptions.__annotations__)
CONSTRAINTS = frozenset({"json_schema", "regex", "choice", "json_object"})
GENERATE_PARAMS = frozenset(GenerateParams.__annotations__)
TOKENIZE_PARAMS = frozenset(TokenizeOptions.__annotations__) - CALL_OPTIONS
PARSE_PARAMS = frozenset(ParseOptions.__annotations__) - CALL_OPTIONS
NO_PARAMS: frozenset[str] = frozenset()

DocumentSource = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
"""A path, the document's bytes, or a binary file object."""


def split_options(
    method: str, options: Mapping[str, Any], allowed: frozenset[str]
) -> tuple[dict[str, Any], CallOptions]:
    """Separate request parameters from call options; reject unknown keywords like Python."""
    unknown = sorted(set(options) - allowed - CALL_OPTIONS)
    if unknown:
        raise TypeError(f"{method}() got an unexpected keyword argument {unknown[0]!r}")
    params = {k: v for k, v in options.items() if k not in CALL_OPTIONS}
    call: CallOptions = {k: v for k, v in options.items() if k in CALL_OPTIONS}  # type: ignore[assignment]
    return params, call


def schema_json(schema: str | Mapping[str, Any]) -> str:
    """A JSON Schema as the requests carry it: text (a mapping is serialized)."""
    return json.dumps(schema) if isinstance(schema, Mapping) else schema


def generate_request(
    prompt: PromptLike, params: Mapping[str, Any]
) -> generation_pb2.GenerateRequest:
    """A GenerateRequest for a raw prompt (str) or a conversation (messages)."""
    fields = dict(params)
    stops = fields.pop("stop_sequences", None)
    if "json_schema" in fields:
        fields["json_schema"] = schema_json(fields["json_schema"])
    if "choice" in fields:
        choice = fields.pop("choice")
        options = [choice] if isinstance(choice, str) else list(choice)
        fields["choice"] = generation_pb2.Choice(options=options)
    if len(CONSTRAINTS & set(fields)) > 1:
        raise TypeError(f"set at most one of {', '.join(sorted(CONSTRAINTS))}")
    request = generation_pb2.GenerateRequest(**fields)
    if isinstance(stops, str):
        stops = [stops]
    request.stop_sequences.extend(stops or ())
    if isinstance(prompt, str):
        request.prompt = prompt
    elif isinstance(prompt, Sequence):
        request.messages.extend(ChatMessage.coerce(m).to_pb() for m in prompt)
    else:
        raise TypeError(f"prompt must be a str or a sequence of chat messages, not {prompt!r}")
    return request


def tokenize_request(text: str, params: Mapping[str, Any]) -> generation_pb2.TokenizeRequest:
    return generation_pb2.TokenizeRequest(text=text, **params)


def parse_request(
    source: DocumentSource, params: Mapping[str, Any]
) -> documents_pb2.DocumentParseRequest:
    """A DocumentParseRequest; reads ``source`` when it is a path or a file object."""
    fields = dict(params)
    content, source_name = _read_document(source)
    formats = fields.pop("formats", None) or ()
    if isinstance(formats, (str, OutputFormat)):
        formats = [formats]
    schema = fields.pop("json_schema", None)
    chunking = _chunking(fields)
    extraction = fields.pop("field_extraction", None)
    if extraction:
        if extraction not in ("model", "labels"):
            raise ValueError(f"field_extraction must be 'model' or 'labels', not {extraction!r}")
        fields["field_extraction"] = documents_pb2.FieldExtraction.Value(
            f"FIELD_EXTRACTION_{extraction.upper()}"
        )
    return documents_pb2.DocumentParseRequest(
        content=content,
        filename=fields.pop("filename", None) or source_name,
        formats=[OutputFormat.coerce(f).to_pb() for f in formats],
        json_schema="" if schema is None else schema_json(schema),
        chunking=chunking,
        **fields,
    )


def _chunking(fields: dict[str, Any]) -> documents_pb2.ChunkingOptions | None:
    """ChunkingOptions from the chunk_* keywords (popped); None when none is given."""
    tokens = fields.pop("chunk_tokens", None)
    overlap = fields.pop("chunk_overlap_tokens", None)
    tokenizer = fields.pop("chunk_tokenizer", None)
    if tokens is None:
        if overlap is not None or tokenizer is not None:
            raise TypeError("chunk_overlap_tokens and chunk_tokenizer need chunk_tokens")
        return None
    return documents_pb2.ChunkingOptions(
        max_tokens=tokens, overlap_tokens=overlap or 0, tokenizer=tokenizer or ""
    )


def _read_document(source: DocumentSource) -> tuple[bytes, str]:
    """The document's bytes and the file name they came from ("" for raw bytes)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), ""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return path.read_bytes(), path.name
    if hasattr(source, "read"):
        name = getattr(source, "name", "")
        return source.read(), Path(name).name if isinstance(name, str) else ""
    raise TypeError(f"a document must be a path, bytes or a binary file, not {source!r}")
