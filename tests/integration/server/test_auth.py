"""Auth edges against the real server (issue 22 item 4): duplicated ``authorization``
values, the cap on health ``Watch`` streams without the key, and ``--api-key`` in argv."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_processes import start_tiny_process
from support import InProcessServer, wait_until
from transformers import AutoTokenizer
from zopilot_client.pb import generation_pb2 as pb
from zopilot_client.pb import generation_pb2_grpc as pb_grpc
from zopilot_server.security import KEY_ON_COMMAND_LINE

KEY = "auth-test-key"
RIGHT = ("authorization", f"Bearer {KEY}")
WRONG = ("authorization", "Bearer not-the-key")
SERVING = health_pb2.HealthCheckResponse.SERVING


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


@pytest.fixture
def keyed_server(make_server: Callable[..., InProcessServer]) -> InProcessServer:
    return make_server(api_key=KEY, max_health_watches=2, doc_prestart=False)


def test_more_than_one_authorization_value_is_unauthenticated(
    keyed_server: InProcessServer,
) -> None:
    request = pb.TokenizeRequest(text="hi")
    with keyed_server.channel() as channel:
        stub = pb_grpc.GenerationStub(channel)
        assert stub.Tokenize(request, metadata=[RIGHT], timeout=10).token_count >= 1
        for metadata in ([RIGHT, WRONG], [WRONG, RIGHT], [RIGHT, RIGHT]):
            for call in (
                lambda m=metadata: stub.Tokenize(request, metadata=m, timeout=10),
                lambda m=metadata: list(
                    stub.GenerateStream(pb.GenerateRequest(prompt="hi"), metadata=m, timeout=10)
                ),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
                assert "more than one authorization value" in info.value.details()
        # The server still serves the well-behaved caller.
        assert stub.Tokenize(request, metadata=[RIGHT], timeout=10).token_count >= 1


@pytest.fixture
def watches() -> Iterator[Callable[..., Iterator[health_pb2.HealthCheckResponse]]]:
    """Opens health Watch streams that are cancelled when the test ends."""
    with ExitStack() as stack:

        def open_watch(
            channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()
        ) -> Iterator[health_pb2.HealthCheckResponse]:
            call = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=""), metadata=metadata, timeout=60
            )
            stack.callback(call.cancel)
            return call

        yield open_watch


def test_health_watches_without_the_key_are_capped(
    keyed_server: InProcessServer, watches: Callable[..., Iterator[object]]
) -> None:
    limit = keyed_server.running.config.max_health_watches
    with keyed_server.channel() as channel:
        held = [watches(channel) for _ in range(limit)]
        assert [next(w).status for w in held] == [SERVING] * limit  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as info:
            next(watches(channel))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-health-watches" in info.value.details()
        # A wrong key is no key; the right one is not counted; Check stays open to probes.
        assert code_of(lambda: next(watches(channel, (WRONG,)))) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert next(watches(channel, (RIGHT,))).status == SERVING  # type: ignore[attr-defined]
        assert keyed_server.health() == SERVING
        # A watcher that leaves frees its place.
        held[0].cancel()  # type: ignore[attr-defined]
        assert wait_until(lambda: _watch_opens(channel, watches))


def _watch_opens(channel: grpc.Channel, watches: Callable[..., Iterator[object]]) -> bool:
    try:
        next(watches(channel))
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return False
    return True


def test_without_an_api_key_every_watch_counts(
    make_server: Callable[..., InProcessServer], watches: Callable[..., Iterator[object]]
) -> None:
    server = make_server(max_health_watches=1, doc_prestart=False)
    with server.channel() as channel:
        assert next(watches(channel)).status == SERVING  # type: ignore[attr-defined]
        assert code_of(lambda: next(watches(channel, (RIGHT,)))) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )


def test_api_key_on_the_command_line_logs_a_warning(
    tiny_model_dir: Path, model_cache_dir: Path
) -> None:
    process, port, log = start_tiny_process(
        tiny_model_dir, model_cache_dir, "--api-key", KEY, "--doc-workers", "1",
        "--no-doc-prestart",
    )  # fmt: skip
    try:
        assert KEY_ON_COMMAND_LINE in log and "--api-key-file" in log
        assert KEY not in log  # the warning does not repeat the key
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GenerationStub(channel)
            # The key from argv is the key in force: without it the call is refused, with
            # it the reply is the model's own tokenization of the text.
            request = pb.TokenizeRequest(text="hi there")
            assert code_of(lambda: stub.Tokenize(request, timeout=10)) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
            reply = stub.Tokenize(request, metadata=[RIGHT], timeout=10)
            expected = AutoTokenizer.from_pretrained(str(tiny_model_dir))(
                "hi there", add_special_tokens=False
            )["input_ids"]
            assert list(reply.ids) == expected
            assert reply.token_count == len(expected) >= 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_only_the_key_itself_in_argv_counts_as_on_the_command_line() -> None:
    from zopilot_server.security import key_on_command_line

    assert key_on_command_line(["--api-key", "k"]) and key_on_command_line(["--api-key=k"])
    assert not key_on_command_line(["--api-key-file", "/run/key", "--port", "0"])


def test_an_unknown_method_does_not_tell_a_caller_without_the_key_it_is_unknown(
    keyed_server: InProcessServer,
) -> None:
    with keyed_server.channel() as channel:
        unknown = channel.unary_unary("/zopilot.v1.Generation/NoSuchMethod")
        assert code_of(lambda: unknown(b"", timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        keyed = code_of(lambda: unknown(b"", metadata=[RIGHT], timeout=10))
    assert keyed == grpc.StatusCode.UNIMPLEMENTED
