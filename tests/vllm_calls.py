"""Calls of the vllm.grpc.engine.VllmEngine service through the stubs published in the
smg-grpc-proto wheel (what a gateway's Python client uses)."""

from __future__ import annotations

from typing import Any

from smg_grpc_proto.generated import vllm_engine_pb2 as vpb


def greedy(**sampling: Any) -> vpb.SamplingParams:
    return vpb.SamplingParams(temperature=0.0, **sampling)


def generate(stub: Any, ids: list[int], params: vpb.SamplingParams, **kw: Any) -> list[Any]:
    request = vpb.GenerateRequest(
        request_id=kw.pop("request_id", "r"),
        tokenized=vpb.TokenizedInput(input_ids=ids),
        sampling_params=params,
        stream=kw.pop("stream", True),
    )
    return list(stub.Generate(request, timeout=60, **kw))


def complete_of(responses: list[Any]) -> Any:
    assert responses[-1].WhichOneof("response") == "complete"
    assert all(r.WhichOneof("response") == "chunk" for r in responses[:-1])
    return responses[-1].complete
