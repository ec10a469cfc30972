"""Server TLS / mTLS and API keys, against the real server with certificates made here.

The tests build their own CA (the ``cryptography`` package): a server certificate for
127.0.0.1 / localhost and a client certificate, both signed by it, and a second CA the
server must not trust.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cli_tools import GRPCURL, ZOPILOT, run_cli
from support import InProcessServer
from tls_pki import Pki
from zopilot_client import TLS, Client
from zopilot_client.pb import generation_pb2, generation_pb2_grpc
from zopilot_server.auth import ApiKey
from zopilot_server.config import ServerConfig, load_config


def _tls_server(
    make_server: Callable[..., InProcessServer], pki: Pki, *, mtls: bool, **extra: object
) -> InProcessServer:
    return make_server(
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca) if mtls else "",
        **extra,
    )


def test_client_library_and_cli_over_tls(make_server, pki: Pki) -> None:
    server = _tls_server(make_server, pki, mtls=False)
    with Client(server.target, tls=TLS(root_certificates=pki.ca), timeout=30) as client:
        result = client.generate("Hello", max_new_tokens=3, ignore_eos=True)
        assert result.usage.generated_tokens == 3
    cli = run_cli("--tls-ca", str(pki.ca), "tokenize", "Hello world", target=server.target)
    assert cli.returncode == 0, cli.stderr
    assert "Hello" in cli.stdout
    # A plaintext client gets nowhere on a TLS port.
    with grpc.insecure_channel(server.target) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Tokenize(generation_pb2.TokenizeRequest(text="x"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate_from_the_trusted_ca(make_server, pki: Pki) -> None:
    server = _tls_server(make_server, pki, mtls=True)
    good = TLS(
        root_certificates=pki.ca, certificate_chain=pki.client_cert, private_key=pki.client_key
    )
    with Client(server.target, tls=good, timeout=30) as client:
        assert len(client.tokenize("Hello world").ids) >= 2
    for name, tls in (
        ("no certificate", TLS(root_certificates=pki.ca)),
        (
            "untrusted CA",
            TLS(
                root_certificates=pki.ca,
                certificate_chain=pki.other_cert,
                private_key=pki.other_key,
            ),
        ),
    ):
        channel = grpc.secure_channel(server.target, tls.credentials())
        with channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Tokenize(generation_pb2.TokenizeRequest(text="x"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, name
    cli = run_cli(
        "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key",
        str(pki.client_key), "--no-retry", "tokenize", "Hi", target=server.target,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    without = run_cli("--tls-ca", str(pki.ca), "--no-retry", "tokenize", "Hi", target=server.target)
    assert without.returncode == 3, without.stderr  # server unavailable: handshake refused


def test_grpcurl_with_cacert(make_server, pki: Pki) -> None:
    server = _tls_server(make_server, pki, mtls=False)
    assert GRPCURL
    command = [GRPCURL, "-cacert", str(pki.ca), server.target, "grpc.health.v1.Health/Check"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"status": "SERVING"' in result.stdout


def test_api_key_file_bearer_any_case(make_server, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    server = make_server(api_key_file=str(key_file))
    with server.channel() as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        request = generation_pb2.TokenizeRequest(text="hi")
        for scheme in ("Bearer", "bearer", "BEARER"):
            reply = stub.Tokenize(request, metadata=[("authorization", f"{scheme} s3cret-key")])
            assert reply.token_count >= 1, scheme
        for wrong in ("Bearer s3cret-kez", "Basic s3cret-key", "s3cret-key", "Bearer "):
            with pytest.raises(grpc.RpcError) as denied:
                stub.Tokenize(request, metadata=[("authorization", wrong)], timeout=5)
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED, wrong
    assert server.config.api_key == ""  # the key never sat in the config (nor in argv)


def test_config_rules_for_tls_and_key_flags(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        load_config(["--tls-cert", "a.pem"], env={})
    with pytest.raises(SystemExit):
        load_config(["--tls-client-ca", "ca.pem"], env={})
    with pytest.raises(SystemExit):
        load_config(["--api-key", "k", "--api-key-file", "f"], env={})
    config = load_config(["--tls-cert", "a", "--tls-key", "b", "--metrics-port", "9090"], env={})
    assert (config.tls_cert, config.tls_key, config.metrics_port) == ("a", "b", 9090)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    from zopilot_server import security

    with pytest.raises(ValueError, match=r"--api-key-file .* empty"):
        security.api_key(ServerConfig(api_key_file=str(empty)))
    with pytest.raises(ValueError, match="--tls-cert"):
        security.server_credentials(ServerConfig(tls_cert=str(tmp_path / "no"), tls_key="x"))
    assert ApiKey("k").accepts("bEaReR k")
    assert ZOPILOT
