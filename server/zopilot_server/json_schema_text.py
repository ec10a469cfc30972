"""A JSON Schema sent as text (GenerateRequest and DocumentParseRequest): parsed once,
with the same size and depth limits everywhere, before anything compiles it."""

from __future__ import annotations

import json
from typing import Any

# Deeper schemas are not written by people; they are written to exhaust a parser.
MAX_SCHEMA_DEPTH = 32


class SchemaTextProblem(ValueError):
    """Why the text cannot be a schema, phrased to follow the field name."""


def parse_schema(text: str, *, max_bytes: int, max_depth: int = MAX_SCHEMA_DEPTH) -> dict[str, Any]:
    """The schema object in ``text``, or SchemaTextProblem."""
    if len(text.encode("utf-8")) > max_bytes:
        raise SchemaTextProblem(f"is larger than {max_bytes} bytes")
    try:
        schema = json.loads(text)
    except RecursionError:
        raise SchemaTextProblem(f"is nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise SchemaTextProblem(f"is not valid JSON ({exc})") from None
    if _depth_exceeds(schema, max_depth):
        raise SchemaTextProblem(f"is nested deeper than {max_depth} levels")
    if not isinstance(schema, dict):
        raise SchemaTextProblem("must be a JSON object")
    return schema


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers deeper than ``limit`` (iteratively: a deep
    schema must not take the recursion it is being checked for)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in children)
    return False
