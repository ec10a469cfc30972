"""Drain applies to VllmEngine: a Generate stream running when SIGTERM arrives completes
with all its tokens (finish "length"), a new call is refused while draining, and the
process exits 0. The real server process, with steps slowed so the stream is surely
mid-way when the signal comes (tests/slow_step_server.py)."""

from __future__ import annotations

import signal
import threading
from typing import Any

import grpc
from server_processes import slow_server
from smg_grpc_proto.generated import vllm_engine_pb2 as vpb
from smg_grpc_proto.generated import vllm_engine_pb2_grpc as vpb_grpc

TOKENS = 40
STEP_S = 0.05  # 40 steps ~2 s: well inside the grace period, far longer than the signal


def request(request_id: str) -> vpb.GenerateRequest:
    return vpb.GenerateRequest(
        request_id=request_id,
        tokenized=vpb.TokenizedInput(input_ids=[1, 504, 2365, 6354]),
        sampling_params=vpb.SamplingParams(temperature=0.0, max_tokens=TOKENS, ignore_eos=True),
        stream=True,
    )


def test_a_running_stream_completes_through_the_drain(
    tiny_model_dir, model_cache_dir, tmp_path
) -> None:
    with slow_server(tmp_path, tiny_model_dir, model_cache_dir) as (process, port, flag):
        flag.write_text(str(STEP_S))
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = vpb_grpc.VllmEngineStub(channel)
        first = threading.Event()
        responses: list[Any] = []
        errors: list[grpc.RpcError] = []

        def read() -> None:
            try:
                for response in stub.Generate(request("draining"), timeout=60):
                    responses.append(response)
                    first.set()
            except grpc.RpcError as error:
                errors.append(error)

        reader = threading.Thread(target=read)
        reader.start()
        assert first.wait(60), "the stream never started"
        process.send_signal(signal.SIGTERM)
        reader.join(60)
        assert not reader.is_alive() and errors == []
        complete = responses[-1].complete
        assert complete.finish_reason == "length"
        assert len(complete.output_ids) == TOKENS
        streamed = [t for r in responses[:-1] for t in r.chunk.token_ids]
        assert streamed == list(complete.output_ids)  # nothing lost across the signal
        # Draining: a new generation is refused (the server may already be gone).
        try:
            list(stub.Generate(request("late"), timeout=10))
            refused = None
        except grpc.RpcError as error:
            refused = error.code()
        assert refused == grpc.StatusCode.UNAVAILABLE
        channel.close()
        assert process.wait(60) == 0
