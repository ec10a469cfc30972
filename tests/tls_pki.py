"""The test PKI: a CA (``cryptography``), a server certificate for 127.0.0.1 / localhost
and a client certificate signed by it, and a second CA the server must not trust.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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


def make_pki(root: Path) -> Pki:
    """A fresh CA, untrusted CA and their certificates, written under ``root``."""
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
