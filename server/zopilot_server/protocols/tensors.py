"""KServe v2 tensors in and out: the few scalar tensors a text model takes and returns.

A tensor's data arrives either in ``contents`` (typed repeated fields) or, as tritonclient
sends it, in ``raw_input_contents`` (one bytes entry per input, in input order; BYTES
elements each as a 4-byte little-endian length and the bytes, BOOL one byte each). Every
check names the tensor; nothing here knows about generation.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import FieldViolation, InvalidArgument

_LENGTH = struct.Struct("<I")
_UINT32 = struct.Struct("<I")


@dataclass(frozen=True)
class TensorSpec:
    """An input or output of the served model, as ModelMetadata describes it."""

    name: str
    datatype: str  # KServe v2 name: BYTES, BOOL, UINT32
    shape: tuple[int, ...] = (1,)
    optional: bool = True


def _bad(field: str, description: str) -> InvalidArgument:
    return InvalidArgument.single(field, description)


def decode_inputs(request: Any, specs: Mapping[str, TensorSpec]) -> dict[str, bytes | bool]:
    """The one element of each input of ``request`` by name (bytes for BYTES, bool for
    BOOL); INVALID_ARGUMENT for an unknown or repeated name, a wrong datatype, a shape
    that is not one element, parameters, or data that does not match."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise _bad(
            "raw_input_contents",
            f"has {len(raw)} entries for {len(request.inputs)} inputs (one per input, in order)",
        )
    values: dict[str, bytes | bool] = {}
    for index, tensor in enumerate(request.inputs):
        field = f"inputs[{index}]"
        spec = specs.get(tensor.name)
        if spec is None:
            known = ", ".join(specs)
            shown = tensor.name[:64] if tensor.name.isprintable() else "(unprintable)"
            raise _bad(f"{field}.name", f"unknown input {shown!r}; this model takes {known}")
        field = f"inputs[{tensor.name}]"
        if tensor.name in values:
            raise _bad(field, "given twice")
        if tensor.datatype != spec.datatype:
            shown = tensor.datatype[:16] if tensor.datatype.isprintable() else "?"
            raise _bad(f"{field}.datatype", f"must be {spec.datatype} (got {shown!r})")
        _check_one_element(field, list(tensor.shape))
        if tensor.parameters:
            raise _bad(f"{field}.parameters", "input parameters (shared memory) are not supported")
        if raw:
            if tensor.HasField("contents"):
                raise _bad(field, "set contents or raw_input_contents, not both")
            values[tensor.name] = _decode_raw(field, spec.datatype, raw[index])
        else:
            values[tensor.name] = _decode_contents(field, spec.datatype, tensor.contents)
    missing = [name for name, spec in specs.items() if not spec.optional and name not in values]
    if missing:
        raise InvalidArgument(
            [FieldViolation(f"inputs[{name}]", "is required") for name in missing]
        )
    return values


def _check_one_element(field: str, shape: Sequence[int]) -> None:
    """A scalar input: shape [1], or [1, 1] from clients that add a batch dimension."""
    if not shape or len(shape) > 2 or any(dim != 1 for dim in shape):
        shown = list(shape[:4]) + (["..."] if len(shape) > 4 else [])
        raise _bad(f"{field}.shape", f"must be [1] (one element; got {shown})")


def _decode_raw(field: str, datatype: str, data: bytes) -> bytes | bool:
    if datatype == "BOOL":
        if len(data) != 1 or data[0] > 1:
            raise _bad(field, "raw BOOL data must be one byte, 0 or 1")
        return bool(data[0])
    if len(data) < _LENGTH.size:
        raise _bad(field, "raw BYTES data must start with a 4-byte little-endian length")
    (length,) = _LENGTH.unpack_from(data)
    if len(data) != _LENGTH.size + length:
        raise _bad(
            field,
            f"raw BYTES data holds one element of {length} bytes plus "
            f"{len(data) - _LENGTH.size - length:+d} bytes (one element expected)",
        )
    return bytes(data[_LENGTH.size :])


def _decode_contents(field: str, datatype: str, contents: Any) -> bytes | bool:
    items = contents.bool_contents if datatype == "BOOL" else contents.bytes_contents
    others = [
        name
        for name, value in contents.ListFields()
        if value and name.name not in ("bool_contents", "bytes_contents")
    ]
    if len(items) != 1 or others:
        kind = "bool_contents" if datatype == "BOOL" else "bytes_contents"
        raise _bad(f"{field}.contents", f"must hold exactly one element in {kind}")
    return items[0]


def bytes_element(value: bytes) -> bytes:
    """One BYTES element in the raw wire format."""
    return _LENGTH.pack(len(value)) + value


def raw_output(datatype: str, value: str | int | bool) -> bytes:
    """The raw_output_contents entry of a one-element output tensor."""
    if datatype == "BYTES":
        return bytes_element(str(value).encode("utf-8"))
    if datatype == "UINT32":
        return _UINT32.pack(int(value))
    if datatype == "BOOL":
        return b"\x01" if value else b"\x00"
    raise ValueError(f"unsupported output datatype {datatype}")
