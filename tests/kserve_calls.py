"""KServe v2 / Triton calls as the tests make them with the real tritonclient: inputs as
tensors, the served model's name, and zopilot.v1's answer to compare with.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton
from support import InProcessServer
from zopilot_client.pb import generation_pb2


def model_name(server: InProcessServer) -> str:
    with server.channel() as channel:
        stub = generation_stub(channel)
        return stub.GetModelInfo(generation_pb2.GetModelInfoRequest()).served_model_name


def generation_stub(channel: grpc.Channel) -> Any:
    from zopilot_client.pb import generation_pb2_grpc

    return generation_pb2_grpc.GenerationStub(channel)


def zopilot_text(server: InProcessServer, prompt: str, max_new_tokens: int) -> str:
    """What zopilot.v1 Generate answers for the same greedy request."""
    with server.channel() as channel:
        request = generation_pb2.GenerateRequest(prompt=prompt, max_new_tokens=max_new_tokens)
        return generation_stub(channel).Generate(request).text


def tensor(name: str, value: Any, datatype: str | None = None) -> triton.InferInput:
    if isinstance(value, bool):
        array = np.array([value], dtype=bool)
        datatype = datatype or "BOOL"
    elif isinstance(value, (dict, str)):
        text = value if isinstance(value, str) else json.dumps(value)
        array = np.array([text.encode()], dtype=np.object_)
        datatype = datatype or "BYTES"
    else:
        array = np.array([value], dtype=np.int32)
        datatype = datatype or "INT32"
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def llm_inputs(prompt: str, *, stream: bool = False, **sampling: Any) -> list[triton.InferInput]:
    return [
        tensor("text_input", prompt),
        tensor("stream", stream),
        tensor("sampling_parameters", sampling),
    ]
