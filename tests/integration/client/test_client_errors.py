"""Status codes to exceptions (one test per mapping), retries, wait_for_ready, TLS.

The real server produces what it can on demand; a small fake server the rest (a given
code with given details, failing the first attempts, breaking a stream midway).
"""

from __future__ import annotations

import datetime
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import zopilot_client as zc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from support import (
    FakeServer,
    abort_with,
    finish_spy,
    free_port,
    health_server_later,
    serving_health,
)
from zopilot_client.pb import generation_pb2 as pb

GENERATE = "/zopilot.v1.Generation/Generate"
STREAM = "/zopilot.v1.Generation/GenerateStream"
INFO = "/zopilot.v1.Generation/GetModelInfo"
HEALTH = "/grpc.health.v1.Health/Check"
FAST_RETRY = zc.RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.stop()


def fake_client(fake: FakeServer, **kwargs: Any) -> zc.Client:
    kwargs.setdefault("retry", FAST_RETRY)
    return zc.Client(fake.target, timeout=10, **kwargs)


# ------------------------------------------------------------------ the real server


def test_invalid_argument_lists_every_field_violation(tiny_server):
    client = zc.Client(tiny_server.target, timeout=30)
    with client, pytest.raises(zc.InvalidArgument) as caught:
        client.generate("Hello", max_new_tokens=0, temperature=-1.0, top_p=0.0)
    error = caught.value
    assert {v.field for v in error.field_violations} == {"max_new_tokens", "temperature", "top_p"}
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "temperature" in str(error)


def test_overloaded_carries_retry_after_when_the_queue_is_full(make_server):
    server = make_server(max_queue=0, max_batch_size=1)
    client = zc.Client(server.target, timeout=30, retry=None)
    with (
        finish_spy(server, hold=True) as spy,  # held: the busy stream cannot end meanwhile
        client,
        client.generate_stream("Hello", max_new_tokens=1500, ignore_eos=True) as busy,
    ):
        next(busy)  # the only slot is taken, and nothing may wait
        assert spy.held.wait(30)
        with pytest.raises(zc.Overloaded) as caught:
            client.generate("Hello", max_new_tokens=2)
    assert caught.value.retry_after is not None and caught.value.retry_after > 0


def test_unauthenticated_without_the_api_key(make_server):
    server = make_server(api_key="secret")
    with zc.Client(server.target, timeout=30) as anonymous:
        with pytest.raises(zc.Unauthenticated):
            anonymous.model_info()
        assert anonymous.health() is zc.HealthStatus.SERVING  # probes need no key
    with zc.Client(server.target, timeout=30, api_key="secret") as client:
        assert client.generate("Hello", max_new_tokens=2).usage.generated_tokens >= 1


def test_unavailable_when_nothing_listens():
    client = zc.Client(f"127.0.0.1:{free_port()}", timeout=10, retry=FAST_RETRY)
    with client, pytest.raises(zc.Unavailable):
        client.health()


def test_deadline_exceeded_while_waiting_for_a_generation_slot(make_server):
    server = make_server(max_batch_size=1, max_queue=4)
    client = zc.Client(server.target, timeout=30)
    with (
        finish_spy(server, hold=True) as spy,  # held: the busy stream cannot end meanwhile
        client,
        client.generate_stream("Hello", max_new_tokens=1500, ignore_eos=True) as busy,
    ):
        next(busy)  # the batch's one row is taken until this block ends
        assert spy.held.wait(30)
        with pytest.raises(zc.DeadlineExceeded):
            client.generate("Hello", max_new_tokens=2, timeout=0.5)


def test_not_found_for_an_unknown_health_service(tiny_server):
    with zc.Client(tiny_server.target, timeout=30) as client, pytest.raises(zc.NotFound):
        client.health("no.such.Service")


def tiny_png(width: int = 1, height: int = 1) -> bytes:
    """A 1x1 PNG (an image, so parsing it needs OCR); with a larger size, a decompression
    bomb's header: it claims width x height pixels and carries one."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\xff\xff")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def test_invalid_document_names_the_field(tiny_server):
    client = zc.Client(tiny_server.target, timeout=60)
    with client, pytest.raises(zc.RpcError) as caught:
        client.parse_document(b"", filename="empty.txt")
    assert isinstance(caught.value, zc.InvalidArgument)
    assert [v.field for v in caught.value.field_violations] == ["content"]


def test_an_image_without_ocr_models_is_read_by_the_bundled_engine(make_server, tmp_path):
    server = make_server(doc_model_dir=str(tmp_path))  # an empty model folder
    with zc.Client(server.target, timeout=60) as client:
        reply = client.parse_document(tiny_png(), filename="scan.png")
        with pytest.raises(zc.RpcError) as caught:
            client.parse_document(tiny_png(50_000, 50_000), filename="bomb.png")
    assert reply.metadata.method == "tesseract-ocr"
    assert "no text found in the document" in reply.warnings
    assert isinstance(caught.value, zc.InvalidArgument)
    assert "--doc-ocr-max-pixels" in caught.value.message


# ------------------------------------------------------------------ the fake server


def test_unimplemented_for_a_method_the_server_lacks(fake):
    with fake_client(fake) as client, pytest.raises(zc.Unimplemented):
        client.model_info()


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, zc.FailedPrecondition),
        (grpc.StatusCode.PERMISSION_DENIED, zc.PermissionDenied),
        (grpc.StatusCode.CANCELLED, zc.Cancelled),
        (grpc.StatusCode.INTERNAL, zc.ServerError),
        (grpc.StatusCode.UNKNOWN, zc.ServerError),
        (grpc.StatusCode.DATA_LOSS, zc.ServerError),
        (grpc.StatusCode.OUT_OF_RANGE, zc.InvalidArgument),
        (grpc.StatusCode.ABORTED, zc.RpcError),
    ],
)
def test_other_codes_map_to_their_class(fake, code, error_class):
    info = error_details_pb2.ErrorInfo(reason="WHY", domain="zopilot.test")
    fake.unary[INFO] = abort_with(code, "it went wrong", info)
    with fake_client(fake) as client, pytest.raises(error_class) as caught:
        client.model_info()
    error = caught.value
    assert type(error) is error_class and isinstance(error, zc.ZopilotError)
    assert error.code is code and error.message == "it went wrong"
    assert error.detail(error_details_pb2.ErrorInfo).reason == "WHY"


# -------------------------------------------------------------------------- retries


def fail_first(times: int, code: grpc.StatusCode, response: bytes) -> Any:
    failing = abort_with(code, "try again")
    state = {"calls": 0}

    def behave(request: Any, context: grpc.ServicerContext) -> Any:
        state["calls"] += 1
        if state["calls"] <= times:
            failing(request, context)
        return response

    return behave


def generate_response(text: str) -> bytes:
    return pb.GenerateResponse(
        text=text, finish_reason=pb.FINISH_REASON_LENGTH, request_id="r"
    ).SerializeToString()


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_retryable_failures_are_retried(fake, code):
    fake.unary[GENERATE] = fail_first(2, code, generate_response("done"))
    with fake_client(fake) as client:
        assert client.generate("Hello").text == "done"
    assert fake.calls[GENERATE] == 3


def test_retries_give_up_after_max_attempts_with_the_servers_hint(fake):
    delay = duration_pb2.Duration(seconds=2)
    fake.unary[GENERATE] = abort_with(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "queue full",
        error_details_pb2.RetryInfo(retry_delay=delay),
    )
    with fake_client(fake) as client, pytest.raises(zc.Overloaded) as caught:
        client.generate("Hello")
    assert caught.value.retry_after == 2.0
    assert fake.calls[GENERATE] == FAST_RETRY.max_attempts


def test_no_retries_when_disabled_or_not_retryable(fake):
    fake.unary[GENERATE] = fail_first(1, grpc.StatusCode.UNAVAILABLE, generate_response("x"))
    with fake_client(fake, retry=None) as client, pytest.raises(zc.Unavailable):
        client.generate("Hello")
    fake.unary[INFO] = abort_with(grpc.StatusCode.INVALID_ARGUMENT, "no")
    with fake_client(fake) as client, pytest.raises(zc.InvalidArgument):
        client.model_info()
    assert fake.calls[GENERATE] == 1 and fake.calls[INFO] == 1


def test_a_stream_that_failed_before_its_first_chunk_is_retried(fake):
    attempts = {"n": 0}

    def stream(request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        attempts["n"] += 1
        if attempts["n"] == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "loading")
        yield generate_response("all of it")

    fake.streams[STREAM] = stream
    with fake_client(fake) as client:
        assert [c.text for c in client.generate_stream("Hello")] == ["all of it"]
    assert fake.calls[STREAM] == 2


def test_a_stream_that_delivered_a_chunk_is_never_replayed(fake):
    def stream(request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield pb.GenerateResponse(text="partial").SerializeToString()
        context.abort(grpc.StatusCode.UNAVAILABLE, "server going away")

    fake.streams[STREAM] = stream
    received: list[str] = []
    with fake_client(fake) as client, pytest.raises(zc.Unavailable):
        for chunk in client.generate_stream("Hello"):
            received.append(chunk.text)
    assert received == ["partial"]
    assert fake.calls[STREAM] == 1


def test_wait_for_ready_waits_for_a_server_that_starts_later():
    port = free_port()
    with health_server_later(port):
        client = zc.Client(f"127.0.0.1:{port}", timeout=30, wait_for_ready=True)
        with client:
            assert client.health() is zc.HealthStatus.SERVING


# ------------------------------------------------------------------ TLS and metadata


def self_signed(name: str) -> tuple[bytes, bytes]:
    crypto = pytest.importorskip("cryptography")
    del crypto
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def test_tls_with_a_private_ca_carries_api_key_and_metadata(tmp_path):
    key_pem, cert_pem = self_signed("zopilot.test")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(cert_pem)
    server = FakeServer(credentials=grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    seen: dict[str, str] = {}

    def check(request: Any, context: grpc.ServicerContext) -> bytes:
        seen.update(dict(context.invocation_metadata()))
        return serving_health(request, context)

    server.unary[HEALTH] = check
    tls = zc.TLS(root_certificates=ca_file, server_name="zopilot.test")
    try:
        with zc.Client(
            server.target, tls=tls, api_key="k", metadata={"X-Team": "search"}, timeout=10
        ) as client:
            assert client.health(metadata=[("x-call", "1")]) is zc.HealthStatus.SERVING
        plaintext = zc.Client(server.target, timeout=10, retry=None)
        with plaintext, pytest.raises(zc.Unavailable):
            plaintext.health()
    finally:
        server.stop()
    assert seen["authorization"] == "Bearer k"
    assert seen["x-team"] == "search" and seen["x-call"] == "1"
    assert seen["user-agent"].startswith("zopilot-client/")
