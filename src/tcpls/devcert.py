"""Throw-away certificates for demos and tests: a private CA and a server certificate.

Never use these in production: the keys are written unencrypted and the CA is
created on the spot. :func:`make_test_pki` writes ``ca.pem``, ``server.pem``
and ``server.key`` into a directory and returns their paths.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DevPKI", "make_test_pki"]

KeyType = Literal["ecdsa", "rsa", "ecdsa-p384"]


@dataclass(frozen=True)
class DevPKI:
    """Paths of a generated CA certificate, server certificate chain and server key."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    ca_key_file: Path


def _new_key(kind: KeyType) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_test_pki(
    directory: str | os.PathLike[str],
    *,
    key_type: KeyType = "ecdsa",
    hostnames: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    valid_days: int = 30,
    not_valid_before: datetime.datetime | None = None,
    prefix: str = "",
) -> DevPKI:
    """Create a CA and a server certificate signed by it, valid for the given names."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    start = not_valid_before or (datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1))
    end = start + datetime.timedelta(days=valid_days)

    ca_key = _new_key(key_type)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tcpls test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = _new_key(key_type)
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0] if hostnames else "tcpls")]
            )
        )
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    pki = DevPKI(
        ca_file=out / f"{prefix}ca.pem",
        cert_file=out / f"{prefix}server.pem",
        key_file=out / f"{prefix}server.key",
        ca_key_file=out / f"{prefix}ca.key",
    )
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.key_file, key)
    _write_key(pki.ca_key_file, ca_key)
    return pki
