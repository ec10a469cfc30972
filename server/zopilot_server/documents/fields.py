"""Structured extraction (json_fields / json_schema) without an LLM.

docstrange 1.1.6 extracts named fields with an Ollama server on localhost, a network
service our workers may not reach. We do the honest offline thing instead: find each
field by its label in the parsed document, in "Label: value" lines, in two-column table
rows ("| Total | 42.00 |") and in table columns (header "Total", first data row).
Labels match case- and punctuation-insensitively ("invoice_number" = "Invoice Number").
A field that is not found is null. Every response says how the values were found.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from .outputs import markdown_tables

EXTRACTOR = "zopilot-label-match"
_KEY_VALUE = re.compile(r"^[\s>*\-+]*(?:\*\*)?([^:|]{1,80}?)(?:\*\*)?\s*:\s*(?:\*\*)?\s*(.+?)\s*$")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def normalise(label: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", label.lower()).split())


def label_values(markdown: str) -> dict[str, str]:
    """Every label the document pairs with a value; the first occurrence wins."""
    found: dict[str, str] = {}
    for label, value in _pairs(markdown):
        key = normalise(label)
        if key and value.strip() and key not in found:
            found[key] = value.strip().strip("*").strip()
    return found


def _pairs(markdown: str) -> Iterable[tuple[str, str]]:
    for line in markdown.splitlines():
        match = _KEY_VALUE.match(line)
        if match and "|" not in line:
            yield match.group(1), match.group(2)
    for table in markdown_tables(markdown):
        for row in table[1:]:  # the first row is the header
            if len(row) == 2:
                yield row[0], row[1]
        if len(table) > 1:
            yield from zip(table[0], table[1], strict=False)


def extract_fields(markdown: str, names: Sequence[str]) -> dict[str, str | None]:
    found = label_values(markdown)
    return {name: found.get(normalise(name)) for name in names}


def schema_fields(schema: dict[str, Any]) -> dict[str, str]:
    """Top-level properties of a JSON schema and their declared types."""
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    return {
        str(name): str(spec.get("type", "string")) if isinstance(spec, dict) else "string"
        for name, spec in properties.items()
    }


def coerce(value: str | None, json_type: str) -> Any:
    """A matched string as the schema's number / integer / boolean type, when it parses."""
    if value is None or json_type not in {"number", "integer", "boolean"}:
        return value
    if json_type == "boolean":
        lowered = value.lower()
        return {"true": True, "yes": True, "false": False, "no": False}.get(lowered, value)
    match = _NUMBER.search(value)
    if match is None:
        return value
    number = float(match.group(0).replace(",", ""))
    return int(number) if json_type == "integer" and number.is_integer() else number


def structured(
    markdown: str, json_fields: Sequence[str], json_schema: dict[str, Any] | None
) -> dict[str, Any]:
    """The JSON body for a structured request, shaped like docstrange's Ollama results."""
    if json_schema is None:
        return {
            "extracted_fields": extract_fields(markdown, json_fields),
            "requested_fields": list(json_fields),
            "format": "local_specified_fields",
            "extractor": EXTRACTOR,
        }
    types = {**dict.fromkeys(json_fields, "string"), **schema_fields(json_schema)}
    values = extract_fields(markdown, list(types))
    return {
        "extracted_data": {name: coerce(values[name], kind) for name, kind in types.items()},
        "schema": json_schema,
        "format": "local_json_schema",
        "extractor": EXTRACTOR,
    }
