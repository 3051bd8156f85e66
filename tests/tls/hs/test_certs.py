"""Signatures (RFC 8446 §4.4.3) and certificate path validation (tcpls.tls.hs.certs).

Certificates are made here with cryptography, at a fixed validation time, so that
every case (expired, not yet valid, wrong name, unknown CA...) is exact and fast.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpls.devcert import make_test_pki
from tcpls.errors import (
    AlertDescription,
    CertificateVerificationError,
    ConfigurationError,
    DecodeError,
    HandshakeFailure,
    IllegalParameter,
    InternalError,
    ProtocolError,
)
from tcpls.tls.hs.certs import CertificateVerifier, parse_certificate_chain
from tcpls.tls.hs.signatures import (
    CERTIFICATE_SIGNATURE_ALGORITHMS,
    SIGNATURE_ALGORITHMS,
    SignatureScheme,
    choose_scheme,
    scheme_name,
    schemes_for_key,
    sign_certificate_verify,
    verify_certificate_verify,
)

S = SignatureScheme
A = AlertDescription
NOW = datetime.datetime(2030, 6, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
TRANSCRIPT = bytes(range(32))

# An RSASSA-PSS key and a self-signed certificate for it (id-RSASSA-PSS public key,
# the certificate shape rsa_pss_pss_* needs), made once with
# `openssl genpkey -algorithm RSA-PSS` and `openssl req -x509`: cryptography cannot
# write such a certificate.
_PSS_CERT = b"""\
-----BEGIN CERTIFICATE-----
MIIDhjCCAjqgAwIBAgIURoCo2NGqdee0R2omYkbHbMf2ayowQQYJKoZIhvcNAQEK
MDSgDzANBglghkgBZQMEAgEFAKEcMBoGCSqGSIb3DQEBCDANBglghkgBZQMEAgEF
AKIDAgEgMCAxHjAcBgNVBAMMFXRjcGxzIHJzYXNzYS1wc3MgdGVzdDAgFw0yNjEy
MDUxMTQ1MDFaGA8yMTI2MTExMTExNDUwMVowIDEeMBwGA1UEAwwVdGNwbHMgcnNh
c3NhLXBzcyB0ZXN0MIIBIDALBgkqhkiG9w0BAQoDggEPADCCAQoCggEBALIM70Eg
hbOWGvvBqm2DGT0+KE7Eqi10EyzsZOL7dBWOx/VvCT2ilY75jE0gJIzZCPugkgXw
nT75C+hd/GQXjBctUw5fgnmyDtq5QBt7cfOfkclyZ4KstBWBMv8dInWWhGTXnUVF
bXKy6LSRSaMgu5WyO5uirFRJGBc7CJD7cT+1nBwLxfE6YjC3iHKv0AEhT2GlciX8
AgHtCXSyKYNMPavwegpE1/Zgy0zEDvy+0ODgOrFsJWIXDQenKPTqBIc2XsvQX5k/
St/cUjI1eBdgOCnI5dhEtwLBTnXJvk6ke4br0YRwdlv+3gq3jZE/86EPkwalrp/k
Iw8kAbV6y8rRFJ0CAwEAAaNQME4wHQYDVR0OBBYEFOzk8ZngHZJa1Ldr+b6ixbyl
jf58MB8GA1UdIwQYMBaAFOzk8ZngHZJa1Ldr+b6ixbyljf58MAwGA1UdEwEB/wQC
MAAwQQYJKoZIhvcNAQEKMDSgDzANBglghkgBZQMEAgEFAKEcMBoGCSqGSIb3DQEB
CDANBglghkgBZQMEAgEFAKIDAgEgA4IBAQALjktav2s8YS/ODz0QkXcd7MHbv3Pp
Jh5rxiXOjhdczlNSBVVugCRIE+l1GFyZx0ZMNSSB0Gjc9H3/T7hf9uHsSPhz7bgG
/Ohx7urHSj7txWuBrjUPq1eE6m+O5VD2kWdzhecDIgSZnPRdDbet/u4w3SZbD/Fw
xb7aE5BsIsnWhTIhigYSzGNma21WQ6D6jDti59SLF59WDkA3qxwtcKrmTivrlO9Q
RuJiqbdkIOSDlLu/zWoF3Rz3CQbiJDKMQYQmWQCA54zAsFghpt7YI7fgBYzSw8R1
Yxp7nblA0CJWL9t1UHIIli0HUiOQHrhtTYOWponhebRpLXXWqMEz37bH
-----END CERTIFICATE-----
"""

_PSS_KEY = b"""\
-----BEGIN PRIVATE KEY-----
MIIEvAIBADALBgkqhkiG9w0BAQoEggSoMIIEpAIBAAKCAQEAsgzvQSCFs5Ya+8Gq
bYMZPT4oTsSqLXQTLOxk4vt0FY7H9W8JPaKVjvmMTSAkjNkI+6CSBfCdPvkL6F38
ZBeMFy1TDl+CebIO2rlAG3tx85+RyXJngqy0FYEy/x0idZaEZNedRUVtcrLotJFJ
oyC7lbI7m6KsVEkYFzsIkPtxP7WcHAvF8TpiMLeIcq/QASFPYaVyJfwCAe0JdLIp
g0w9q/B6CkTX9mDLTMQO/L7Q4OA6sWwlYhcNB6co9OoEhzZey9BfmT9K39xSMjV4
F2A4Kcjl2ES3AsFOdcm+TqR7huvRhHB2W/7eCreNkT/zoQ+TBqWun+QjDyQBtXrL
ytEUnQIDAQABAoIBACmXDOIVIzYOV5I8LD+1clVUahzwImJIrVv+ghhlLToF5p5l
h+6ORkol74hqfC8sWUVRvhpGGK0HhqkKHzUQLQiS7UY7uCIOHhsoT5m7zaPfP7Ij
F5u2FMC7M7rUxuJZvOZDWTi/nW+/68yV7XH96ONwRS03I/LyOf7fKsKXAV6kfHQM
VlSy3sJoICssqFhXAiSkQ+neAwNhMKFRb+HYH2ncZ+CIbmHgeWnXdjQFDdTQCMQM
53FE+urJ0pxYQeRCx4+zUItgXZcG1eLxo1w5jaMRrZjjQCbP3YmCsTUfYoMk7w4O
2Wt8ZY6YFEfwyts1W1t4R+K5xBd2pQn7WXlTd48CgYEA8KpQE5TrVl/6e0ncIijn
hDi6xt/WjQknIpqrGBW58AWRvY4jNNAbXwC3TP9TeS/9Dqj26kqWiSsXPD1zSy7X
tMAK0fYguMxaI69JPCuYRXgwcWapSFRbCSaqycXYvR+S86UbgwbRqZK9ndaprxyG
jl0H8adOgiyH3RC38ti31nMCgYEAvWVC88VdsiskvU2rgsAMEMhNd05O6iIRAwM7
Nu6yLk/Ozt08M+m+4j7f2R4mVrK8zOVe7D2/ijp7P6q/kpkq4qCwkgx9qj4LRrAV
BisHIx7oIss+WlqNKXfA2kyq8JrYf+hQRL3jmV+xT8rS0vZDUzqXc+0PWzblnUvI
A/hplK8CgYAvIQshao5TkeQZdLNZNS1xZTKec4Muh1ZUnnlW9Bo/eLe7qTQXyZEy
n49F0tJj7xPdZRVFeGnWXsvkDhyf4oJ3cQwtZceuqMYWKuNqlxbws8K40mPgODTD
rADSFp6FGsPKVtD2bcVtMcFUQY9lLW7kPi+qERt8vn+0uOts8Se/JQKBgQCLMe8B
Bh8UoQzBbGIPGGJFu1DjzFPHU/44vpk4iDnAO7t84bArXzGBSkBua/A1a+vCkxku
eztYth567l0ZuyR/pyXeUPvSsQLMkwEApYL7Vu25FLLg6QgyX+cHCa3gY42WhADq
ZLzvrhq80A4eKgvVEYzaEHJm0XP0JQv9jwbZ1QKBgQC2gV5IujXsXKgwgY4fs/u4
jjlI1zyQ6fnW1vjlu5Idr00ZQIAK/V9EoFtaXI3EgZlffiuev06NBJRmfRdVxIzc
zAJKlI1bcGqn7/KhjEhmUICGpZPTssz2M3//OR2XGvrfTCLHj+3O28SNiHkz3yJH
SStqQfEKq5vxFh3loBLKDw==
-----END PRIVATE KEY-----
"""


# -- keys and certificates ------------------------------------------------------------


ECKey = ec.EllipticCurvePrivateKey
RSAKey = rsa.RSAPrivateKey
Ed25519Key = ed25519.Ed25519PrivateKey
Ed448Key = ed448.Ed448PrivateKey


@dataclass
class Keys:
    """One key of each kind, made once per test module (RSA generation is slow)."""

    p256: ECKey
    p384: ECKey
    p521: ECKey
    rsa: RSAKey
    rsa1024: RSAKey
    ed25519: Ed25519Key
    ed448: Ed448Key
    pss: RSAKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    pss = serialization.load_pem_private_key(_PSS_KEY, password=None)
    assert isinstance(pss, rsa.RSAPrivateKey)
    return Keys(
        p256=ec.generate_private_key(ec.SECP256R1()),
        p384=ec.generate_private_key(ec.SECP384R1()),
        p521=ec.generate_private_key(ec.SECP521R1()),
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa1024=rsa.generate_private_key(public_exponent=65537, key_size=1024),
        ed25519=ed25519.Ed25519PrivateKey.generate(),
        ed448=ed448.Ed448PrivateKey.generate(),
        pss=pss,
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_cert(
    subject: str,
    key: Any,
    issuer: tuple[str, Any] | None = None,
    *,
    ca: bool = False,
    sans: Sequence[x509.GeneralName] | None = (),
    eku: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.SERVER_AUTH,),
    start: datetime.datetime = NOW - 30 * DAY,
    end: datetime.datetime = NOW + 30 * DAY,
    aki: bool = True,
    path_length: int | None = None,
) -> x509.Certificate:
    """A certificate for ``key`` signed by ``issuer`` (name, key), self-signed without.

    ``sans`` are the subjectAltName entries (``None``: no extension); ``eku`` the
    extended key usages of an end-entity certificate (``None``: no extension).
    """
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
        .add_extension(_usage(ca=ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if sans is not None and (sans or not ca):
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if eku is not None and not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    ed = isinstance(issuer_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    return builder.sign(issuer_key, None if ed else hashes.SHA256())


def dns(*names: str) -> list[x509.GeneralName]:
    return [x509.DNSName(n) for n in names]


def ips(*addresses: str) -> list[x509.GeneralName]:
    return [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]


def pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


@dataclass
class PKI:
    """A root CA, an intermediate CA under it, and their keys."""

    root: x509.Certificate
    root_key: Any
    inter: x509.Certificate
    inter_key: Any

    @property
    def issuer(self) -> tuple[str, Any]:
        """What leaves are signed by: the intermediate CA."""
        return ("Test Intermediate CA", self.inter_key)

    def verifier(self, **kwargs: Any) -> CertificateVerifier:
        return CertificateVerifier(cadata=pem(self.root), **kwargs)


def make_pki(root_key: Any, inter_key: Any) -> PKI:
    root = make_cert("Test Root CA", root_key, ca=True, start=NOW - 3650 * DAY)
    inter = make_cert(
        "Test Intermediate CA", inter_key, ("Test Root CA", root_key), ca=True, sans=None
    )
    return PKI(root, root_key, inter, inter_key)


@pytest.fixture(scope="module")
def pki() -> PKI:
    return make_pki(
        ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1())
    )


def leaf(
    pki: PKI, sans: Sequence[x509.GeneralName] | None = None, **kwargs: Any
) -> x509.Certificate:
    """A server certificate for a.example, b.example under ``pki``'s intermediate."""
    key = ec.generate_private_key(ec.SECP256R1())
    if sans is None:
        sans = dns("a.example", "b.example")
    return make_cert("a.example", key, pki.issuer, sans=sans, **kwargs)


def refused(call: Callable[[], object], alert: AlertDescription) -> CertificateVerificationError:
    with pytest.raises(CertificateVerificationError) as info:
        call()
    assert info.value.alert == alert, str(info.value)
    assert "\n" not in str(info.value)
    return info.value


# -- signature schemes ----------------------------------------------------------------


def test_offered_schemes_in_preference_order() -> None:
    preference = (
        S.ecdsa_secp256r1_sha256,
        S.ecdsa_secp384r1_sha384,
        S.ecdsa_secp521r1_sha512,
        S.ed25519,
        S.ed448,
        S.rsa_pss_rsae_sha256,
        S.rsa_pss_rsae_sha384,
        S.rsa_pss_rsae_sha512,
        S.rsa_pss_pss_sha256,
        S.rsa_pss_pss_sha384,
        S.rsa_pss_pss_sha512,
    )
    assert preference == SIGNATURE_ALGORITHMS
    pkcs1 = (S.rsa_pkcs1_sha256, S.rsa_pkcs1_sha384, S.rsa_pkcs1_sha512)
    assert (*SIGNATURE_ALGORITHMS, *pkcs1) == CERTIFICATE_SIGNATURE_ALGORITHMS
    assert not set(pkcs1) & set(SIGNATURE_ALGORITHMS)
    assert [int(s) for s in (S.ed25519, S.rsa_pss_pss_sha512)] == [0x0807, 0x080B]


def test_scheme_names() -> None:
    assert scheme_name(0x0403) == "ecdsa_secp256r1_sha256"
    assert scheme_name(0x0201) == "rsa_pkcs1_sha1"
    assert scheme_name(0xFEFE) == "0xfefe"


def test_schemes_for_key(keys: Keys) -> None:
    assert schemes_for_key(keys.p256) == (S.ecdsa_secp256r1_sha256,)
    assert schemes_for_key(keys.p384) == (S.ecdsa_secp384r1_sha384,)
    assert schemes_for_key(keys.p521) == (S.ecdsa_secp521r1_sha512,)
    assert schemes_for_key(keys.ed25519) == (S.ed25519,)
    assert schemes_for_key(keys.ed448) == (S.ed448,)
    rsae = (S.rsa_pss_rsae_sha256, S.rsa_pss_rsae_sha384, S.rsa_pss_rsae_sha512)
    assert schemes_for_key(keys.rsa) == rsae
    # an RSASSA-PSS certificate needs the rsa_pss_pss schemes; an rsaEncryption one the rsae
    pss_cert = x509.load_pem_x509_certificate(_PSS_CERT)
    pss = (S.rsa_pss_pss_sha256, S.rsa_pss_pss_sha384, S.rsa_pss_pss_sha512)
    assert schemes_for_key(keys.pss, certificate=pss_cert) == pss
    rsa_cert = make_cert("rsa", keys.rsa, sans=dns("rsa.example"))
    assert schemes_for_key(keys.rsa, certificate=rsa_cert) == rsae
    # PSS with SHA-512 and a 64-byte salt needs a modulus of at least 1040 bits
    assert schemes_for_key(keys.rsa1024) == rsae[:2]
    assert schemes_for_key(ec.generate_private_key(ec.SECP256K1())) == ()
    assert schemes_for_key(x25519.X25519PrivateKey.generate()) == ()
    assert schemes_for_key(None) == ()


def test_choose_scheme_follows_our_preference(keys: Keys) -> None:
    everything = list(reversed(CERTIFICATE_SIGNATURE_ALGORITHMS))
    assert choose_scheme(keys.p256, everything) == S.ecdsa_secp256r1_sha256
    assert choose_scheme(keys.rsa, everything) == S.rsa_pss_rsae_sha256
    assert choose_scheme(keys.rsa, [0x0401, 0x0806, 0x0805]) == S.rsa_pss_rsae_sha384
    assert choose_scheme(keys.ed448, [0xFFFF, 0x0808]) == S.ed448
    pss_cert = x509.load_pem_x509_certificate(_PSS_CERT)
    assert choose_scheme(keys.pss, everything, certificate=pss_cert) == S.rsa_pss_pss_sha256


def test_choose_scheme_without_common_scheme(keys: Keys) -> None:
    with pytest.raises(HandshakeFailure) as info:
        choose_scheme(keys.p256, [S.rsa_pkcs1_sha256, 0x0201, S.ecdsa_secp384r1_sha384])
    assert info.value.alert == A.handshake_failure
    assert str(info.value) == (
        "no signature algorithm in common with the peer (it offers rsa_pkcs1_sha256, "
        "rsa_pkcs1_sha1, ecdsa_secp384r1_sha384; our ECDSA P-256 key signs with "
        "ecdsa_secp256r1_sha256)"
    )
    with pytest.raises(HandshakeFailure, match=r"it offers none;"):
        choose_scheme(keys.rsa, [])
    # a hostile list of thousands of codepoints gives a short message
    with pytest.raises(HandshakeFailure) as info:
        choose_scheme(keys.ed25519, list(range(0x1000, 0x3000)))
    assert "and 8180 more" in str(info.value) and len(str(info.value)) < 300


def test_choose_scheme_with_unusable_key() -> None:
    with pytest.raises(InternalError, match=r"cannot sign a TLS 1\.3 CertificateVerify"):
        choose_scheme(x25519.X25519PrivateKey.generate(), SIGNATURE_ALGORITHMS)


# -- CertificateVerify ----------------------------------------------------------------

ROUND_TRIPS = [
    ("p256", S.ecdsa_secp256r1_sha256),
    ("p384", S.ecdsa_secp384r1_sha384),
    ("p521", S.ecdsa_secp521r1_sha512),
    ("ed25519", S.ed25519),
    ("ed448", S.ed448),
    ("rsa", S.rsa_pss_rsae_sha256),
    ("rsa", S.rsa_pss_rsae_sha384),
    ("rsa", S.rsa_pss_rsae_sha512),
    ("pss", S.rsa_pss_pss_sha256),
    ("pss", S.rsa_pss_pss_sha384),
    ("pss", S.rsa_pss_pss_sha512),
]


def _cert_for(keys: Keys, kind: str) -> tuple[Any, x509.Certificate]:
    if kind == "pss":
        return keys.pss, x509.load_pem_x509_certificate(_PSS_CERT)
    key = getattr(keys, kind)
    return key, make_cert(kind, key, sans=dns(f"{kind}.example"))


@pytest.mark.parametrize("server", [True, False])
@pytest.mark.parametrize(("kind", "scheme"), ROUND_TRIPS)
def test_certificate_verify_round_trip(keys: Keys, kind: str, scheme: int, server: bool) -> None:
    key, cert = _cert_for(keys, kind)
    signature = sign_certificate_verify(key, scheme, TRANSCRIPT, server=server)
    verify_certificate_verify(
        cert, scheme, signature, TRANSCRIPT, server=server, offered=SIGNATURE_ALGORITHMS
    )
    # the other side's context string, another transcript: decrypt_error
    for other_server, transcript in ((not server, TRANSCRIPT), (server, TRANSCRIPT[::-1])):
        with pytest.raises(ProtocolError) as info:
            verify_certificate_verify(
                cert,
                scheme,
                signature,
                transcript,
                server=other_server,
                offered=SIGNATURE_ALGORITHMS,
            )
        assert info.value.alert == A.decrypt_error
        assert "does not verify" in str(info.value)


def test_signed_content_is_rfc8446_layout(keys: Keys) -> None:
    """64 spaces, the context string, a zero byte, the transcript hash (§4.4.3)."""
    signature = sign_certificate_verify(keys.ed25519, S.ed25519, TRANSCRIPT, server=True)
    content = b"\x20" * 64 + b"TLS 1.3, server CertificateVerify\x00" + TRANSCRIPT
    keys.ed25519.public_key().verify(signature, content)
    signature = sign_certificate_verify(keys.rsa, S.rsa_pss_rsae_sha256, TRANSCRIPT, server=False)
    content = b"\x20" * 64 + b"TLS 1.3, client CertificateVerify\x00" + TRANSCRIPT
    salt32 = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    keys.rsa.public_key().verify(signature, content, salt32, hashes.SHA256())


@pytest.mark.parametrize(("kind", "scheme"), ROUND_TRIPS)
@pytest.mark.parametrize(
    "garbage", [b"", b"\x00", b"\x30\x06\x02\x01\x01\x02\x01\x01", b"\xff" * 600, b"A" * 70000]
)
def test_garbage_signature_is_decrypt_error(
    keys: Keys, kind: str, scheme: int, garbage: bytes
) -> None:
    _, cert = _cert_for(keys, kind)
    with pytest.raises(ProtocolError) as info:
        verify_certificate_verify(
            cert, scheme, garbage, TRANSCRIPT, server=True, offered=SIGNATURE_ALGORITHMS
        )
    assert info.value.alert == A.decrypt_error


def test_pss_salt_must_be_the_digest_length(keys: Keys) -> None:
    content = b" " * 64 + b"TLS 1.3, server CertificateVerify\x00" + TRANSCRIPT
    short_salt = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20)
    signature = keys.rsa.sign(content, short_salt, hashes.SHA256())
    _, cert = _cert_for(keys, "rsa")
    with pytest.raises(ProtocolError) as info:
        verify_certificate_verify(
            cert, S.rsa_pss_rsae_sha256, signature, TRANSCRIPT, server=True, offered=[0x0804]
        )
    assert info.value.alert == A.decrypt_error


def test_scheme_not_offered_is_illegal_parameter(keys: Keys) -> None:
    signature = sign_certificate_verify(
        keys.p256, S.ecdsa_secp256r1_sha256, TRANSCRIPT, server=True
    )
    _, cert = _cert_for(keys, "p256")
    with pytest.raises(IllegalParameter) as info:
        verify_certificate_verify(
            cert, S.ecdsa_secp256r1_sha256, signature, TRANSCRIPT, server=True, offered=[0x0807]
        )
    assert info.value.alert == A.illegal_parameter
    assert str(info.value) == (
        "the server signed its CertificateVerify with ecdsa_secp256r1_sha256, "
        "which we did not offer"
    )


@pytest.mark.parametrize("scheme", [0x0401, 0x0501, 0x0601, 0x0201, 0x0203, 0x0202])
def test_pkcs1_and_sha1_are_illegal_even_if_offered(keys: Keys, scheme: int) -> None:
    _, cert = _cert_for(keys, "rsa")
    content = b" " * 64 + b"TLS 1.3, client CertificateVerify\x00" + TRANSCRIPT
    signature = keys.rsa.sign(content, padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(IllegalParameter, match=r"TLS 1\.3 forbids"):
        verify_certificate_verify(
            cert,
            scheme,
            signature,
            TRANSCRIPT,
            server=False,
            offered=(*CERTIFICATE_SIGNATURE_ALGORITHMS, 0x0201, 0x0202, 0x0203),
        )


@pytest.mark.parametrize(
    ("kind", "scheme"),
    [
        ("p256", S.ecdsa_secp384r1_sha384),  # TLS 1.3 binds the curve to the scheme
        ("p384", S.ecdsa_secp256r1_sha256),
        ("p256", S.ed25519),
        ("ed25519", S.ed448),
        ("ed448", S.ed25519),
        ("rsa", S.rsa_pss_pss_sha256),  # rsaEncryption key: rsae only
        ("pss", S.rsa_pss_rsae_sha256),  # RSASSA-PSS key: pss only
        ("rsa", S.ecdsa_secp256r1_sha256),
        ("ed25519", S.rsa_pss_rsae_sha256),
        ("rsa", 0x1234),  # offered below, but unknown to us
    ],
)
def test_scheme_that_does_not_fit_the_key_is_illegal_parameter(
    keys: Keys, kind: str, scheme: int
) -> None:
    _, cert = _cert_for(keys, kind)
    with pytest.raises(IllegalParameter) as info:
        verify_certificate_verify(
            cert,
            scheme,
            b"\x00" * 64,
            TRANSCRIPT,
            server=False,
            offered=(*SIGNATURE_ALGORITHMS, 0x1234),
        )
    assert "does not fit" in str(info.value)
    assert str(info.value).startswith(
        f"the client signed its CertificateVerify with {scheme_name(scheme)}"
    )


def test_key_description_in_mismatch_message(keys: Keys) -> None:
    _, cert = _cert_for(keys, "p256")
    with pytest.raises(IllegalParameter) as info:
        verify_certificate_verify(
            cert, S.ecdsa_secp384r1_sha384, b"", TRANSCRIPT, server=True, offered=[0x0503]
        )
    assert str(info.value) == (
        "the server signed its CertificateVerify with ecdsa_secp384r1_sha384, which does not "
        "fit its ECDSA P-256 certificate key"
    )
    _, cert = _cert_for(keys, "pss")
    with pytest.raises(IllegalParameter, match="RSASSA-PSS 2048-bit certificate key"):
        verify_certificate_verify(
            cert, S.rsa_pss_rsae_sha256, b"", TRANSCRIPT, server=True, offered=[0x0804]
        )


@pytest.mark.parametrize(
    ("kind", "scheme"),
    [("p256", S.ecdsa_secp384r1_sha384), ("rsa", S.ed25519), ("ed25519", S.rsa_pss_rsae_sha256)],
)
def test_signing_with_a_scheme_that_does_not_fit_is_internal_error(
    keys: Keys, kind: str, scheme: int
) -> None:
    with pytest.raises(InternalError, match="cannot sign a CertificateVerify with"):
        sign_certificate_verify(getattr(keys, kind), scheme, TRANSCRIPT, server=True)
    with pytest.raises(InternalError):
        sign_certificate_verify(keys.rsa1024, S.rsa_pss_rsae_sha512, TRANSCRIPT, server=True)


@settings(max_examples=200, deadline=None)
@given(scheme=st.integers(0, 0xFFFF), signature=st.binary(max_size=600))
def test_hostile_certificate_verify_only_raises_protocol_errors(
    scheme: int, signature: bytes
) -> None:
    cert = _HOSTILE_CERT
    try:
        verify_certificate_verify(
            cert, scheme, signature, TRANSCRIPT, server=True, offered=range(0x10000)
        )
    except ProtocolError as exc:
        assert exc.alert in (A.illegal_parameter, A.decrypt_error)
    else:
        pytest.fail("a random signature verified")


_HOSTILE_CERT = make_cert(
    "hostile", ec.generate_private_key(ec.SECP256R1()), sans=dns("hostile.example")
)


# -- parsing a Certificate message's chain -------------------------------------------


def test_parse_certificate_chain(pki: PKI) -> None:
    cert = leaf(pki)
    ders = [c.public_bytes(serialization.Encoding.DER) for c in (cert, pki.inter)]
    assert parse_certificate_chain(ders) == [cert, pki.inter]
    assert parse_certificate_chain([memoryview(ders[0])]) == [cert]  # type: ignore[list-item]
    assert parse_certificate_chain([]) == []


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00",
        b"\x30\x03abc",
        b"\x30\x84\xff\xff\xff\xff",
        b"hello, not a certificate",
        b"-----BEGIN CERTIFICATE-----\n",
    ],
)
def test_garbage_der_is_decode_error(pki: PKI, garbage: bytes) -> None:
    good = leaf(pki).public_bytes(serialization.Encoding.DER)
    with pytest.raises(DecodeError) as info:
        parse_certificate_chain([good, garbage])
    assert info.value.alert == A.decode_error
    assert "certificate 2 of 2 is not a DER X.509 certificate" in str(info.value)


def test_truncated_or_padded_der_is_decode_error(pki: PKI) -> None:
    good = leaf(pki).public_bytes(serialization.Encoding.DER)
    for bad in (good[:-1], good[: len(good) // 2], good + b"\x00", b"\x31" + good[1:]):
        with pytest.raises(DecodeError):
            parse_certificate_chain([bad])


def test_malformed_extension_is_bad_certificate(keys: Keys) -> None:
    bad_san = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.17"), b"\x04\x02no")
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("x"))
        .issuer_name(_name("x"))
        .public_key(keys.p256.public_key())
        .serial_number(1)
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(bad_san, critical=False)
        .sign(keys.p256, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    with pytest.raises(CertificateVerificationError) as info:
        parse_certificate_chain([der])
    assert info.value.alert == A.bad_certificate
    assert "malformed" in str(info.value) and "ParseError" not in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=3))
def test_random_chains_only_raise_protocol_errors(ders: list[bytes]) -> None:
    with contextlib.suppress(DecodeError, CertificateVerificationError):
        parse_certificate_chain(ders)


# -- path validation: servers ---------------------------------------------------------


def test_good_chain_with_an_intermediate(pki: PKI) -> None:
    verifier = pki.verifier()
    cert = leaf(pki)
    verifier.verify_server([cert, pki.inter], "a.example", now=NOW)
    verifier.verify_server([cert, pki.inter], "B.Example.", now=NOW)  # case, trailing dot
    # spare and repeated certificates are allowed (RFC 8446 §4.4.2)
    spare = make_cert("Spare", ec.generate_private_key(ec.SECP256R1()), ca=True)
    verifier.verify_server([cert, spare, pki.inter, pki.inter], "a.example", now=NOW)
    # the intermediate alone in the trust store is enough
    CertificateVerifier(cadata=pem(pki.inter)).verify_server([cert], "a.example", now=NOW)


def test_missing_intermediate_is_unknown_ca(pki: PKI) -> None:
    error = refused(
        lambda: pki.verifier().verify_server([leaf(pki)], "a.example", now=NOW), A.unknown_ca
    )
    assert str(error) == (
        "certificate verification failed: unknown issuer (not signed by a trusted CA; "
        "issuer: CN=Test Intermediate CA)"
    )


def test_unknown_ca(pki: PKI) -> None:
    other = make_pki(
        ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    )
    chain = [leaf(other), other.inter]
    error = refused(
        lambda: pki.verifier().verify_server(chain, "a.example", now=NOW), A.unknown_ca
    )
    assert "unknown issuer (not signed by a trusted CA" in str(error)


def test_ca_with_a_trusted_name_but_another_key_is_unknown_ca(pki: PKI) -> None:
    """Two throw-away PKIs (devcert) both call their CA "tcpls test CA": say so."""
    impostor = make_pki(
        ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    )
    chain = [leaf(impostor), impostor.inter]
    error = refused(
        lambda: pki.verifier().verify_server(chain, "a.example", now=NOW), A.unknown_ca
    )
    assert str(error) == (
        "certificate verification failed: unknown issuer (not signed by a trusted CA; "
        "a trusted CA is named CN=Test Root CA but did not sign it)"
    )


def test_self_signed_certificate_not_trusted_is_unknown_ca(pki: PKI, keys: Keys) -> None:
    verifier = pki.verifier()
    for cert in (
        make_cert("a.example", keys.p256, sans=dns("a.example")),  # end-entity shape
        make_cert("a.example", keys.p256, ca=True, sans=dns("a.example")),  # openssl req -x509
        make_cert("a.example", keys.p256, sans=dns("other.example"), end=NOW - DAY),
    ):
        error = refused(
            partial(verifier.verify_server, [cert], "a.example", now=NOW), A.unknown_ca
        )
        assert (
            str(error) == "certificate verification failed: self-signed certificate (not trusted)"
        )


def test_pinned_self_signed_certificate(keys: Keys) -> None:
    cert = make_cert("a.example", keys.p256, sans=dns("a.example"))
    CertificateVerifier(cadata=pem(cert)).verify_server([cert], "a.example", now=NOW)
    # the shape `openssl req -x509 -addext subjectAltName=...` makes, a CA certificate,
    # is trusted as it is when pinned (as OpenSSL does), for its names only
    ca_shaped = make_cert("a.example", keys.p256, ca=True, sans=dns("a.example"))
    pinned = CertificateVerifier(cadata=pem(ca_shaped))
    pinned.verify_server([ca_shaped], "a.example", now=NOW)
    pinned.verify_client([ca_shaped], now=NOW)
    wrong = refused(
        lambda: pinned.verify_server([ca_shaped], "b.example", now=NOW), A.bad_certificate
    )
    assert str(wrong) == "the certificate is valid for a.example, not for b.example"
    refused(
        lambda: pinned.verify_server([ca_shaped], "a.example", now=NOW + 5000 * DAY),
        A.certificate_expired,
    )
    # without a subjectAltName (the usual one-liner), its Common Name
    bare = make_cert("a.example", keys.p256, ca=True)
    CertificateVerifier(cadata=pem(bare)).verify_server([bare], "a.example", now=NOW)
    refused(
        lambda: CertificateVerifier(cadata=pem(bare)).verify_server([bare], "b.example", now=NOW),
        A.bad_certificate,
    )
    # not pinned: still refused
    refused(
        lambda: CertificateVerifier(cadata=pem(cert)).verify_server([bare], "a.example", now=NOW),
        A.unknown_ca,
    )


def test_expired_certificate(pki: PKI) -> None:
    end = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    cert = leaf(pki, start=end - 90 * DAY, end=end)
    error = refused(
        lambda: pki.verifier().verify_server([cert, pki.inter], "a.example", now=NOW),
        A.certificate_expired,
    )
    assert str(error) == "certificate verification failed: the certificate expired on 2030-01-01"


def test_not_yet_valid_certificate(pki: PKI) -> None:
    start = datetime.datetime(2030, 6, 1, 13, 30, tzinfo=datetime.UTC)
    cert = leaf(pki, start=start)
    error = refused(
        lambda: pki.verifier().verify_server([cert, pki.inter], "a.example", now=NOW),
        A.certificate_expired,
    )
    assert str(error) == (
        "certificate verification failed: the certificate is not valid before 2030-06-01 13:30 UTC"
    )
    # a naive time is UTC
    pki.verifier().verify_server([cert, pki.inter], "a.example", now=datetime.datetime(2030, 6, 2))


def test_expired_intermediate_and_root(pki: PKI) -> None:
    end = datetime.datetime(2030, 5, 1, tzinfo=datetime.UTC)
    inter = make_cert(
        "Test Intermediate CA",
        pki.inter_key,
        ("Test Root CA", pki.root_key),
        ca=True,
        start=end - 90 * DAY,
        end=end,
    )
    error = refused(
        lambda: pki.verifier().verify_server([leaf(pki), inter], "a.example", now=NOW),
        A.certificate_expired,
    )
    assert str(error) == (
        "certificate verification failed: the CA certificate CN=Test Intermediate CA "
        "expired on 2030-05-01"
    )
    root = make_cert("Test Root CA", pki.root_key, ca=True, start=end - 90 * DAY, end=end)
    error = refused(
        lambda: CertificateVerifier(cadata=pem(root)).verify_server(
            [leaf(pki), pki.inter], "a.example", now=NOW
        ),
        A.certificate_expired,
    )
    assert str(error) == (
        "certificate verification failed: the trusted CA certificate CN=Test Root CA "
        "expired on 2030-05-01"
    )


def test_dns_name_mismatch(pki: PKI) -> None:
    chain = [leaf(pki), pki.inter]
    error = refused(
        lambda: pki.verifier().verify_server(chain, "c.example", now=NOW), A.bad_certificate
    )
    assert str(error) == "the certificate is valid for a.example, b.example, not for c.example"


def test_ip_address_names(pki: PKI) -> None:
    verifier = pki.verifier()
    chain = [leaf(pki, sans=[*dns("a.example"), *ips("192.0.2.1", "2001:db8::1")]), pki.inter]
    for name in (
        "192.0.2.1",
        "2001:db8::1",
        "[2001:db8::1]",
        "2001:DB8:0::1",
        "2001:db8::1%eth0",
    ):
        verifier.verify_server(chain, name, now=NOW)
    error = refused(lambda: verifier.verify_server(chain, "192.0.2.2", now=NOW), A.bad_certificate)
    assert str(error) == (
        "the certificate is valid for a.example, 192.0.2.1, 2001:db8::1, not for 192.0.2.2"
    )
    refused(lambda: verifier.verify_server(chain, "::ffff:192.0.2.1", now=NOW), A.bad_certificate)
    # an address written as a DNS name in the certificate does not match an IP address
    as_dns = [leaf(pki, sans=dns("192.0.2.1")), pki.inter]
    refused(lambda: verifier.verify_server(as_dns, "192.0.2.1", now=NOW), A.bad_certificate)
    # nor does an IP address entry match a DNS name
    refused(lambda: verifier.verify_server(chain, "a.example.invalid", now=NOW), A.bad_certificate)


def test_wildcard(pki: PKI) -> None:
    verifier = pki.verifier()
    chain = [leaf(pki, sans=dns("*.a.example")), pki.inter]
    verifier.verify_server(chain, "www.a.example", now=NOW)
    for name in ("a.example", "x.www.a.example", "www.b.example"):
        error = refused(partial(verifier.verify_server, chain, name, now=NOW), A.bad_certificate)
        assert str(error) == f"the certificate is valid for *.a.example, not for {name}"
    # a wildcard that is not the whole leftmost label matches nothing
    partial_wildcard = [leaf(pki, sans=dns("w*.a.example")), pki.inter]
    refused(
        lambda: verifier.verify_server(partial_wildcard, "www.a.example", now=NOW),
        A.bad_certificate,
    )


def test_internationalized_name(pki: PKI) -> None:
    chain = [leaf(pki, sans=dns("xn--bcher-kva.example")), pki.inter]
    pki.verifier().verify_server(chain, "bücher.example", now=NOW)


def test_unusable_server_name(pki: PKI) -> None:
    chain = [leaf(pki), pki.inter]
    for name in ("under_score.example", "", "a..example", "bad name"):
        error = refused(
            partial(pki.verifier().verify_server, chain, name, now=NOW), A.bad_certificate
        )
        assert "not a valid host name or IP address" in str(error)


def test_no_server_name_checks_the_chain_only(pki: PKI) -> None:
    verifier = pki.verifier()
    verifier.verify_server([leaf(pki), pki.inter], None, now=NOW)
    wildcard = [leaf(pki, sans=dns("*.a.example")), pki.inter]
    verifier.verify_server(wildcard, None, now=NOW)
    by_ip = [leaf(pki, sans=[x509.DNSName("under_score"), *ips("192.0.2.7")]), pki.inter]
    verifier.verify_server(by_ip, None, now=NOW)
    refused(lambda: verifier.verify_server([leaf(pki)], None, now=NOW), A.unknown_ca)
    expired = [leaf(pki, end=NOW - DAY), pki.inter]
    refused(lambda: verifier.verify_server(expired, None, now=NOW), A.certificate_expired)
    no_san = [make_cert("a", ec.generate_private_key(ec.SECP256R1()), pki.issuer, sans=None)]
    error = refused(
        lambda: verifier.verify_server([*no_san, pki.inter], None, now=NOW), A.bad_certificate
    )
    assert "no subjectAltName" in str(error)
    uri_only = [x509.UniformResourceIdentifier("spiffe://example/a")]
    no_host = [leaf(pki, sans=uri_only), pki.inter]
    error = refused(lambda: verifier.verify_server(no_host, None, now=NOW), A.bad_certificate)
    assert "names no host name or IP address" in str(error)


def test_certificate_without_subject_alt_name(pki: PKI, keys: Keys) -> None:
    cert = make_cert("a.example", keys.p256, pki.issuer, sans=None)
    error = refused(
        lambda: pki.verifier().verify_server([cert, pki.inter], "a.example", now=NOW),
        A.bad_certificate,
    )
    assert str(error) == (
        "certificate verification failed: the server certificate has no subjectAltName "
        "extension (the Common Name is not used)"
    )


def test_client_only_certificate_is_unsupported_for_a_server(pki: PKI) -> None:
    cert = leaf(pki, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    error = refused(
        lambda: pki.verifier().verify_server([cert, pki.inter], "a.example", now=NOW),
        A.unsupported_certificate,
    )
    assert str(error) == (
        "certificate verification failed: the certificate is not for TLS servers "
        "(its extended key usage lacks serverAuth)"
    )
    # no extended key usage at all: any use
    pki.verifier().verify_server([leaf(pki, eku=None), pki.inter], "a.example", now=NOW)


def test_end_entity_without_authority_key_identifier(pki: PKI) -> None:
    cert = leaf(pki, aki=False)
    error = refused(
        lambda: pki.verifier().verify_server([cert, pki.inter], "a.example", now=NOW),
        A.bad_certificate,
    )
    assert "no authorityKeyIdentifier" in str(error)


def test_unknown_critical_extension_is_unsupported(pki: PKI, keys: Keys) -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("a.example"))
        .issuer_name(pki.inter.subject)
        .public_key(keys.p256.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.inter_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(dns("a.example")), critical=False)
        .add_extension(unknown, critical=True)
        .sign(pki.inter_key, hashes.SHA256())
    )
    error = refused(
        lambda: pki.verifier().verify_server([cert, pki.inter], "a.example", now=NOW),
        A.unsupported_certificate,
    )
    assert str(error) == (
        "certificate verification failed: the server certificate has an unsupported "
        "critical extension (1.3.6.1.4.1.99999.1)"
    )


def test_malformed_extension_reaching_the_verifier(pki: PKI, keys: Keys) -> None:
    """A caller that skips parse_certificate_chain still gets bad_certificate."""
    bad_san = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.17"), b"\x04\x02no")
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("a.example"))
        .issuer_name(pki.inter.subject)
        .public_key(keys.p256.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.inter_key.public_key()),
            critical=False,
        )
        .add_extension(bad_san, critical=False)
        .sign(pki.inter_key, hashes.SHA256())
    )
    verifier = pki.verifier()
    for call in (
        partial(verifier.verify_server, [cert, pki.inter], "a.example", now=NOW),
        partial(verifier.verify_server, [cert, pki.inter], None, now=NOW),
        partial(verifier.verify_client, [cert, pki.inter], now=NOW),
    ):
        assert "is malformed" in str(refused(call, A.bad_certificate))


def test_intermediate_that_is_not_a_ca(pki: PKI, keys: Keys) -> None:
    not_ca = make_cert(
        "Test Intermediate CA",
        pki.inter_key,
        ("Test Root CA", pki.root_key),
        sans=dns("i.example"),
    )
    error = refused(
        lambda: pki.verifier().verify_server([leaf(pki), not_ca], "a.example", now=NOW),
        A.unknown_ca,
    )
    assert "is not a CA certificate" in str(error)


def test_chain_depth_and_path_length(pki: PKI) -> None:
    chain = [leaf(pki), pki.inter]
    error = refused(
        lambda: pki.verifier(max_chain_depth=0).verify_server(chain, "a.example", now=NOW),
        A.unknown_ca,
    )
    assert "no trusted CA within 0 intermediate certificates" in str(error)
    # a root with pathLenConstraint 1: root -> inter -> leaf is fine, one CA more is not
    root = CertificateVerifier(
        cadata=pem(make_cert("Test Root CA", pki.root_key, ca=True, path_length=1))
    )
    root.verify_server(chain, "a.example", now=NOW)
    deeper_key = ec.generate_private_key(ec.SECP256R1())
    deeper = make_cert("Deeper CA", deeper_key, pki.issuer, ca=True)
    cert = make_cert("a", deeper_key, ("Deeper CA", deeper_key), sans=dns("a.example"))
    pki.verifier().verify_server([cert, deeper, pki.inter], "a.example", now=NOW)
    error = refused(
        lambda: root.verify_server([cert, deeper, pki.inter], "a.example", now=NOW),
        A.bad_certificate,
    )
    assert str(error) == (
        "certificate verification failed: the chain breaks a CA's path length constraint"
    )
    with pytest.raises(ValueError, match="max_chain_depth"):
        CertificateVerifier(cadata=pem(pki.root), max_chain_depth=256)


def test_key_types_of_leaves_and_cas(keys: Keys) -> None:
    roots: tuple[Any, ...] = (keys.rsa, keys.p384, keys.p521)
    for root_key in roots:
        pki = make_pki(root_key, root_key)
        for key in (keys.p256, keys.rsa, keys.ed25519, keys.ed448):
            cert = make_cert("a.example", key, pki.issuer, sans=dns("a.example"))
            pki.verifier().verify_server([cert, pki.inter], "a.example", now=NOW)
    # the web PKI profile refuses Ed25519 CAs and weak RSA CAs
    weak_roots: tuple[Any, ...] = (keys.ed25519, keys.rsa1024)
    for root_key in weak_roots:
        pki = make_pki(root_key, root_key)
        cert = make_cert("a.example", keys.p256, pki.issuer, sans=dns("a.example"))
        error = refused(
            partial(pki.verifier().verify_server, [cert, pki.inter], "a.example", now=NOW),
            A.unsupported_certificate,
        )
        assert "Ed25519" in str(error) or "shorter than 2048 bits" in str(error)
    # a pinned self-signed Ed25519 certificate is its own anchor: accepted
    cert = make_cert("a.example", keys.ed25519, sans=dns("a.example"))
    CertificateVerifier(cadata=pem(cert)).verify_server([cert], "a.example", now=NOW)


def test_hostile_names_stay_on_one_line(pki: PKI) -> None:
    names = [f"n{i}.example" for i in range(20)]
    chain = [leaf(pki, sans=dns("evil\n.example\x1b[31m", *names)), pki.inter]
    error = refused(
        lambda: pki.verifier().verify_server(chain, "c.example", now=NOW), A.bad_certificate
    )
    text = str(error)
    assert "\x1b" not in text and "evil\\x0a.example\\x1b[31m" in text
    assert text.endswith("and 13 more, not for c.example")
    assert len(text) < 400


def test_empty_chain(pki: PKI) -> None:
    refused(lambda: pki.verifier().verify_server([], "a.example", now=NOW), A.decode_error)
    refused(lambda: pki.verifier().verify_client([], now=NOW), A.certificate_required)


# -- path validation: clients ---------------------------------------------------------


def test_client_certificates(pki: PKI, keys: Keys) -> None:
    verifier = pki.verifier()
    client_auth = [ExtendedKeyUsageOID.CLIENT_AUTH]
    for sans in (dns("client.example"), [x509.RFC822Name("me@example.com")]):
        cert = make_cert("client", keys.p256, pki.issuer, sans=sans, eku=client_auth)
        verifier.verify_client([cert, pki.inter], now=NOW)
    no_eku = make_cert("client", keys.p256, pki.issuer, sans=dns("c.example"), eku=None)
    verifier.verify_client([no_eku, pki.inter], now=NOW)
    server_only = make_cert("client", keys.p256, pki.issuer, sans=dns("c.example"))
    error = refused(
        lambda: verifier.verify_client([server_only, pki.inter], now=NOW),
        A.unsupported_certificate,
    )
    assert "lacks clientAuth" in str(error)
    no_san = make_cert("client", keys.p256, pki.issuer, sans=None, eku=client_auth)
    error = refused(
        lambda: verifier.verify_client([no_san, pki.inter], now=NOW), A.bad_certificate
    )
    assert "the client certificate has no subjectAltName" in str(error)
    cert = make_cert("client", keys.p256, pki.issuer, sans=dns("c.example"), eku=client_auth)
    refused(lambda: verifier.verify_client([cert], now=NOW), A.unknown_ca)
    expired = make_cert("c", keys.p256, pki.issuer, sans=dns("c.example"), end=NOW - DAY)
    refused(lambda: verifier.verify_client([expired, pki.inter], now=NOW), A.certificate_expired)


# -- trust anchors --------------------------------------------------------------------


def test_trust_anchor_sources(pki: PKI, tmp_path: Path) -> None:
    chain = [leaf(pki), pki.inter]
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes(pem(pki.root))
    CertificateVerifier(cafile=str(cafile)).verify_server(chain, "a.example", now=NOW)
    other = make_cert("Other", ec.generate_private_key(ec.SECP256R1()), ca=True)
    both = CertificateVerifier(cafile=str(cafile), cadata=pem(other))
    both.verify_server(chain, "a.example", now=NOW)
    # the default is certifi's bundle, which does not know our CA
    refused(lambda: CertificateVerifier().verify_server(chain, "a.example", now=NOW), A.unknown_ca)


def test_bad_trust_anchor_sources(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="CA file not found"):
        CertificateVerifier(cafile=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match="CA file is a directory"):
        CertificateVerifier(cafile=str(tmp_path))
    (tmp_path / "empty.pem").write_bytes(b"nothing here")
    with pytest.raises(ConfigurationError, match="holds no PEM CA certificate"):
        CertificateVerifier(cafile=str(tmp_path / "empty.pem"))
    with pytest.raises(ConfigurationError, match="cadata holds no PEM CA certificate"):
        CertificateVerifier(cadata=b"")


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa", "ecdsa-p384"])
def test_devcert_pki_verifies(tmp_path: Path, key_type: str) -> None:
    """The certificates tcpls itself makes (tcpls.devcert, the tests' fixtures) pass."""
    dev = make_test_pki(tmp_path, key_type=key_type)  # type: ignore[arg-type]
    chain = x509.load_pem_x509_certificates(dev.cert_file.read_bytes())
    verifier = CertificateVerifier(cafile=str(dev.ca_file))
    for name in ("localhost", "127.0.0.1", "::1", None):
        verifier.verify_server(chain, name)
    error = refused(lambda: verifier.verify_server(chain, "example.com"), A.bad_certificate)
    assert (
        str(error) == "the certificate is valid for localhost, 127.0.0.1, ::1, not for example.com"
    )
    # another throw-away PKI: same CA name, other key
    other = make_test_pki(tmp_path / "other", key_type=key_type)  # type: ignore[arg-type]
    error = refused(
        lambda: CertificateVerifier(cafile=str(other.ca_file)).verify_server(chain, "localhost"),
        A.unknown_ca,
    )
    assert "a trusted CA is named CN=tcpls test CA but did not sign it" in str(error)
