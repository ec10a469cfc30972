"""Helpers of the quantization suite: the modes, and one real server run per mode.

tests/ is on sys.path (tests_quant/conftest.py), so tests/support.py is shared as is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from support import InProcessServer
from zopilot_client.pb import generation_pb2 as pb
from zopilot_client.pb import generation_pb2_grpc
from zopilot_server.config import ServerConfig


@dataclass(frozen=True)
class Mode:
    """One quantization setting: a test id and the ServerConfig fields it changes."""

    id: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def bits(self) -> int:
        return {"none": 32, "8bit": 8, "4bit": 4}[self.overrides.get("quantize", "none")]


FP32 = Mode("fp32")


def four_bit(quant_type: str, double_quant: bool = False) -> Mode:
    """A 4-bit mode: nf4 or fp4, with or without double quant."""
    name = f"4bit-{quant_type}" + ("-dq" if double_quant else "")
    overrides = {"bnb_4bit_quant_type": quant_type, "bnb_double_quant": double_quant}
    return Mode(name, {"quantize": "4bit", **overrides})


# What the issue asks for on both models: 8-bit, and 4-bit nf4 / fp4 with and without
# double quant.
MATRIX = (
    Mode("8bit", {"quantize": "8bit"}),
    *(four_bit(kind, dq) for kind in ("nf4", "fp4") for dq in (False, True)),
)
# The remaining flags, on the tiny model only (fast): a non-default outlier threshold and
# an explicit compute dtype.
TINY_EXTRAS = (
    Mode("8bit-threshold-3", {"quantize": "8bit", "bnb_int8_threshold": 3.0}),
    Mode("4bit-nf4-bf16", {"quantize": "4bit", "bnb_4bit_compute_dtype": "bfloat16"}),
)


@dataclass
class Run:
    """What one server start in one mode showed: its model info, a stream, the layers."""

    mode: Mode
    info: pb.ModelInfo
    chunks: list[pb.GenerateResponse]
    layers: dict[str, list[Any]]  # bitsandbytes layer class name -> its modules
    plain_linears: list[str]  # names of the torch.nn.Linear layers left unquantized
    linear_weights: int  # weight values in the linear layers bitsandbytes may quantize

    @property
    def text(self) -> str:
        return "".join(chunk.text for chunk in self.chunks)


def linear_layers(model: torch.nn.Module) -> tuple[dict[str, list[Any]], list[str], int]:
    """The bitsandbytes layers by class name, the names of the plain nn.Linear ones, and
    how many weight values the linear layers other than lm_head hold (a packed 4-bit
    tensor's numel is half that: we count from the layer's shape instead)."""
    quantized: dict[str, list[Any]] = {}
    plain: list[str] = []
    weights = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if type(module).__module__.startswith("bitsandbytes"):
            quantized.setdefault(type(module).__name__, []).append(module)
        else:
            plain.append(name)
        if name != "lm_head":
            weights += module.in_features * module.out_features
    return quantized, plain, weights


def serve_and_stream(base: ServerConfig, mode: Mode, request: pb.GenerateRequest) -> Run:
    """Start the real server in ``mode``, stream ``request`` through it, stop it."""
    server = InProcessServer(dataclasses.replace(base, **mode.overrides))
    try:
        with server.channel() as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
            chunks = list(stub.GenerateStream(request, timeout=120))
        assert server.running.engine is not None
        layers, plain, weights = linear_layers(server.running.engine.loaded.model)
    finally:
        server.stop()
    return Run(mode, info, chunks, layers, plain, weights)


def run_matrix(
    base: ServerConfig, modes: tuple[Mode, ...], request: pb.GenerateRequest
) -> Iterator[tuple[str, Run]]:
    """Each mode in turn: one server at a time, so only one model copy is in memory."""
    for mode in modes:
        yield mode.id, serve_and_stream(base, mode, request)
