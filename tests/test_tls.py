"""Server TLS / mTLS and API keys, against the real server with certificates made here.

The tests build their own CA (the ``cryptography`` package): a server certificate for
127.0.0.1 / localhost and a client certificate, both signed by it, and a second CA the
server must not trust.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support import InProcessServer
from test_cli import ZOPILOT, run_cli
from test_grpcurl import GRPCURL
from zopilot_client import TLS, Client
from zopilot_client.pb import generation_pb2, generation_pb2_grpc
from zopilot_server.auth import ApiKey
from zopilot_server.config import ServerConfig, load_config

Key = ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, key: Key, issuer: tuple[x509.Certificate, Key] | None, *, server: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    signer_name, signer_key = (issuer[0].subject, issuer[1]) if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer_key, hashes.SHA256())


@dataclasses.dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_cert: Path  # signed by a CA the server does not trust
    other_key: Path


def _write(path: Path, cert: x509.Certificate, key: Key) -> tuple[Path, Path]:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path.with_suffix(".pem"), path.with_suffix(".key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca_key, other_ca_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _certificate("zopilot test CA", ca_key, None)
    other_ca = _certificate("untrusted CA", other_ca_key, None)
    ca_path, _ = _write(root / "ca", ca, ca_key)
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("server", "client", "other")}
    server = _write(
        root / "server", _certificate("server", keys["server"], (ca, ca_key), server=True),
        keys["server"],
    )  # fmt: skip
    client = _write(
        root / "client", _certificate("client", keys["client"], (ca, ca_key)), keys["client"]
    )
    other = _write(
        root / "other",
        _certificate("other", keys["other"], (other_ca, other_ca_key)),
        keys["other"],
    )
    return Pki(ca_path, *server, *client, *other)


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
