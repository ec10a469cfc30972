"""Health while loading / serving / draining, and the real process: start, signal, exit."""

from __future__ import annotations

import signal
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_processes import read_until, start_process, start_tiny_process
from support import InProcessServer, assert_generates
from zopilot_client.pb import generation_pb2 as pb
from zopilot_client.pb import generation_pb2_grpc
from zopilot_server.generation.loading.model_loader import load_model

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_not_serving_and_unavailable_while_the_model_loads(tiny_config):
    release = threading.Event()

    def slow_loader(config):
        release.wait(30)
        return load_model(config)

    server = InProcessServer(tiny_config, loader=slow_loader, wait_ready=False)
    try:
        assert server.health() == NOT_SERVING
        assert server.health("zopilot.v1.Generation") == NOT_SERVING
        with server.channel() as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Generate(pb.GenerateRequest(prompt="hi"), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "loading" in info.value.details()
            release.set()
            server.wait_ready()
            assert server.health() == SERVING
            assert_generates(stub)
    finally:
        release.set()
        server.stop()


def test_drain_reports_not_serving_and_lets_in_flight_streams_finish(tiny_config):
    server = InProcessServer(tiny_config)
    channel = server.channel()
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    assert next(watch).status == SERVING
    stub = generation_pb2_grpc.GenerationStub(channel)
    in_flight = stub.GenerateStream(
        pb.GenerateRequest(prompt="drain", max_new_tokens=300, ignore_eos=True), timeout=60
    )
    next(in_flight)
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 20})
    stopper.start()
    try:
        assert next(watch).status == NOT_SERVING
        watch.cancel()  # a Watch would otherwise hold the drain open for the whole grace
        rest = list(in_flight)  # completes within the grace period instead of being cut
        assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
    finally:
        stopper.join(30)
        channel.close()


def test_process_serves_and_exits_cleanly_on_sigterm(tiny_model_dir, model_cache_dir):
    process, port, log = start_tiny_process(
        tiny_model_dir, model_cache_dir, "--grace-period-s", "2"
    )
    try:
        assert "loaded" in log and "MiB" in log, "the load log states time and memory"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            assert_generates(stub)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        rest = process.stdout.read()
        assert "draining" in rest and "stopped" in rest
        assert "Traceback" not in log + rest
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "looks like a Hugging Face hub id"),
        ("/nonexistent/model-dir", "no such directory or .gguf file"),
    ],
)
def test_unloadable_model_fails_fast_with_a_message(model, needle, model_cache_dir):
    process = start_process("--port", "0", "--model", model, "--cache-dir", str(model_cache_dir))
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 2
    assert needle in out
    assert "Traceback" not in out


def test_sigterm_during_a_long_load_exits_without_waiting_for_it(tmp_path):
    """The embedded model's first conversion takes ~15 s; a SIGTERM meanwhile must not
    wait for it (the converted model never appears, proving the process did not wait)."""
    process = start_process("--port", "0", "--cache-dir", str(tmp_path))
    try:
        read_until(process, r"converting embedded model")
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert not list(tmp_path.glob("*/config.json")), "the process waited for the load"
    finally:
        if process.poll() is None:
            process.kill()
