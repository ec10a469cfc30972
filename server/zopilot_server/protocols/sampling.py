"""vLLM-style ``sampling_parameters`` (Triton's vLLM backend) onto a zopilot.v1 request.

The keys are vLLM ``SamplingParams`` names, the way the vLLM backend reads them: a JSON
object whose values may be JSON numbers and booleans or their string forms (the
backend's own sample client sends ``{"temperature": "0.1", "max_tokens": "100"}``).
Keys zopilot honours are mapped; keys it knows but cannot honour are accepted only at
their no-op value; any other key is INVALID_ARGUMENT naming it, never ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from zopilot_client.pb import generation_pb2 as pb

from ..errors import FieldViolation, InvalidArgument

FIELD = "sampling_parameters"
MAX_JSON_BYTES = 64 * 1024


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        number = float(value.strip())
    else:
        raise ValueError("must be a number")
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _integer(value: Any) -> int:
    if isinstance(value, str):
        value = value.strip()
        try:
            return int(value)
        except ValueError:
            pass
    number = _number(value)
    if not number.is_integer():
        raise ValueError("must be an integer")
    if abs(number) >= 2**63:
        raise ValueError("is out of range")
    return int(number)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError("must be true or false")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ValueError("must be a string or a list of strings")


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError("must be a string")


def _int32(value: Any) -> int:
    number = _integer(value)
    if not -(2**31) <= number < 2**31:
        raise ValueError("is out of range")
    return number


# vLLM key -> (parse, zopilot.v1 GenerateRequest field).
MAPPED: dict[str, tuple[Callable[[Any], Any], str]] = {
    "max_tokens": (_int32, "max_new_tokens"),
    "min_tokens": (_int32, "min_new_tokens"),
    "temperature": (_number, "temperature"),
    "top_p": (_number, "top_p"),
    "top_k": (_int32, "top_k"),
    "repetition_penalty": (_number, "repetition_penalty"),
    "seed": (_integer, "seed"),
    "stop": (_strings, "stop_sequences"),
    "ignore_eos": (_boolean, "ignore_eos"),
    "include_stop_str_in_output": (_boolean, "include_stop_sequence"),
    # vLLM's Triton backend takes the LoRA adapter here too
    "lora_name": (_string, "adapter"),
}
# vLLM keys zopilot has no equivalent for: accepted only at the value that does nothing.
NO_OP: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "n": (_integer, 1),
    "best_of": (_integer, 1),
    "presence_penalty": (_number, 0.0),
    "frequency_penalty": (_number, 0.0),
    "skip_special_tokens": (_boolean, True),
}
SUPPORTED = ", ".join(MAPPED)  # the no-op keys are left out: the message stays short
# The zopilot.v1 field a violation names -> the key the client sent (mapping.renamed).
FIELD_NAMES = {field: f"{FIELD}.{key}" for key, (_, field) in MAPPED.items()}


def parse_json(data: bytes) -> dict[str, Any]:
    """The ``sampling_parameters`` tensor's JSON object; INVALID_ARGUMENT otherwise."""
    if len(data) > MAX_JSON_BYTES:
        raise InvalidArgument.single(FIELD, f"is {len(data)} bytes; the limit is {MAX_JSON_BYTES}")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidArgument.single(FIELD, "is not UTF-8") from None
    except RecursionError:
        raise InvalidArgument.single(FIELD, "is nested too deeply") from None
    except ValueError as exc:
        raise InvalidArgument.single(FIELD, f"is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument.single(FIELD, "must be a JSON object")
    return value


def apply(params: Mapping[str, Any], request: pb.GenerateRequest) -> None:
    """Set ``request``'s fields from ``params``; every bad key is reported at once."""
    problems: list[FieldViolation] = []
    for key, value in params.items():
        shown = key[:64] if key.isprintable() else "(unprintable key)"
        try:
            if key in MAPPED:
                parse, field = MAPPED[key]
                _set(request, field, parse(value))
            elif key in NO_OP:
                parse, neutral = NO_OP[key]
                if parse(value) != neutral:
                    raise ValueError(f"is not supported by this server (only {neutral!r})")
            else:
                problems.append(
                    FieldViolation(FIELD, f"unknown key {shown!r} (supported: {SUPPORTED})")
                )
        except ValueError as exc:
            problems.append(FieldViolation(f"{FIELD}.{shown}", str(exc)))
    if problems:
        raise InvalidArgument(problems)


def _set(request: pb.GenerateRequest, field: str, value: Any) -> None:
    if field == "stop_sequences":
        request.stop_sequences.extend(value)
    elif field == "top_k" and value in (-1, 0):
        return  # vLLM's "off"
    elif field == "seed" and value < 0:
        raise ValueError("must be >= 0")
    else:
        setattr(request, field, value)
