"""The drain on SIGTERM holds however slow a step is, and a second signal ends it now.

The real server process (tests/slow_step_server.py) with steps made slower than the
grace on demand, and busy-loop processes on every core while it drains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from server_processes import read_until, slow_server
from support import retry_delay_s, wait_until
from zopilot_client.pb import generation_pb2 as pb
from zopilot_client.pb import generation_pb2_grpc

STREAMS = 6
BATCH = 4  # so STREAMS - BATCH requests are queued when the signal comes


class Streams:
    """STREAMS long generations on one channel; what each one ended with."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = generation_pb2_grpc.GenerationStub(self.channel)
        self.first = [threading.Event() for _ in range(STREAMS)]
        self.text = [""] * STREAMS
        self.last: list[pb.GenerateResponse | None] = [None] * STREAMS
        self.error: list[grpc.RpcError | None] = [None] * STREAMS
        request = pb.GenerateRequest(prompt="drain", max_new_tokens=1500, ignore_eos=True)
        self.threads = [
            threading.Thread(target=self._read, args=(i, stub.GenerateStream(request, timeout=90)))
            for i in range(STREAMS)
        ]
        for thread in self.threads:
            thread.start()

    def _read(self, i: int, call: grpc.Future) -> None:
        try:
            for response in call:
                self.first[i].set()
                self.text[i] += response.text
                self.last[i] = response
        except grpc.RpcError as error:
            self.error[i] = error

    def running(self) -> list[int]:
        return [i for i in range(STREAMS) if self.first[i].is_set()]

    def join(self, timeout: float = 60) -> bool:
        """Wait for every stream to end; False if one still runs after ``timeout``."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.channel.close()
        return not any(thread.is_alive() for thread in self.threads)


@contextmanager
def busy_cores() -> Iterator[None]:
    """A busy-loop process per core, ended (by its pid) on exit."""
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        yield
    finally:
        for process in busy:
            process.kill()
            process.wait(10)


def assert_drained(streams: Streams, running: list[int]) -> None:
    for i in range(STREAMS):
        if i in running:  # ended by the drain with its text, not cut by the grace
            assert streams.error[i] is None, streams.error[i]
            assert streams.last[i].finish_reason == pb.FINISH_REASON_SHUTDOWN
            assert streams.text[i] and streams.last[i].usage.generated_tokens > 0
        else:  # was queued: refused at once, with advice to retry elsewhere
            assert streams.error[i] is not None, f"queued stream {i} was not refused"
            assert streams.error[i].code() == grpc.StatusCode.UNAVAILABLE
            assert "draining" in streams.error[i].details()
            assert retry_delay_s(streams.error[i]) > 0


def start_loaded(port: int, flag: Path) -> tuple[Streams, list[int]]:
    flag.write_text("0.05")  # slow enough that every stream is still running at the signal
    streams = Streams(port)
    assert wait_until(lambda: len(streams.running()) == BATCH, timeout=30)
    time.sleep(0.3)  # the others reach the queue
    running = streams.running()
    assert len(running) == BATCH
    return streams, running


def test_drain_holds_when_a_step_outlasts_the_grace(tiny_model_dir, model_cache_dir, tmp_path):
    """Each step takes 4 s, longer than the whole 3 s grace: no step boundary comes in
    time, so the rows are ended mid-step and their final chunks still go out."""
    with slow_server(tmp_path, tiny_model_dir, model_cache_dir, "--grace-period-s", "3") as (
        process,
        port,
        flag,
    ):
        streams, running = start_loaded(port, flag)
        with busy_cores():
            flag.write_text("4")
            process.send_signal(signal.SIGTERM)
            streams.join()
            assert process.wait(30) == 0
        assert_drained(streams, running)
        assert "Traceback" not in process.stdout.read()


def test_a_second_signal_ends_the_drain_at_once(tiny_model_dir, model_cache_dir, tmp_path):
    """With a 60 s grace the streams would run on for a minute; a second SIGINT ends
    them now, each with SHUTDOWN and its text, and the process exits 0."""
    with slow_server(tmp_path, tiny_model_dir, model_cache_dir, "--grace-period-s", "60") as (
        process,
        port,
        flag,
    ):
        streams, running = start_loaded(port, flag)
        process.send_signal(signal.SIGINT)
        read_until(process, r"draining \(grace 60")
        process.send_signal(signal.SIGINT)
        assert streams.join(timeout=20), "the second signal did not end the drain"
        assert process.wait(20) == 0
        assert_drained(streams, running)
        assert "Traceback" not in process.stdout.read()


def test_idle_calls_do_not_hold_the_drain_for_the_grace(tiny_model_dir, model_cache_dir):
    """Nothing to drain but a health Watch and a call whose request never completes:
    the drain stops at once (UNAVAILABLE to both) instead of waiting out a 60 s grace."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from raw_http2 import RawHttp2
    from server_processes import start_tiny_process

    process, port, _ = start_tiny_process(
        tiny_model_dir, model_cache_dir, "--grace-period-s", "60", "--no-doc-prestart"
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    raw = RawHttp2(f"127.0.0.1:{port}")
    try:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        half_sent = raw.half_send("/zopilot.v1.Generation/Generate")
        process.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert process.wait(20) == 0, "idle calls held the drain"
        try:
            next(watch)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert wait_until(lambda: raw.ended(half_sent) or raw.closed(), timeout=10)
    finally:
        raw.close()
        channel.close()
        if process.poll() is None:
            process.kill()
