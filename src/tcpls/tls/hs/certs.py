"""Signatures and certificate path validation for the TLS 1.3 handshake (RFC 8446).

Two jobs live here:

* **CertificateVerify** (RFC 8446 §4.4.3): which signature schemes we offer and
  accept, choosing one for our own key, signing the transcript hash, and checking
  the peer's signature against the key of its end-entity certificate.
* **Certificate path validation** with :mod:`cryptography.x509.verification`:
  :class:`CertificateVerifier` builds a path from the peer's certificate to a
  trusted CA and turns every refusal into a :class:`~tcpls.errors.CertificateVerificationError`
  carrying the right alert and one readable line.

The verification policy is cryptography's "web PKI" profile (CA/Browser Forum
baseline requirements), unchanged. What matters to users:

* The end-entity certificate must carry a ``subjectAltName`` (the Common Name is
  never used as a host name) and an ``authorityKeyIdentifier``, must not be a CA
  certificate (``basicConstraints CA:TRUE``), and, if it has an extended key usage,
  it must list ``serverAuth`` (servers) or ``clientAuth`` (clients).
* A self-signed certificate is accepted only when it is itself in the trust
  store (pinned) and has the end-entity shape above; ``openssl req -x509`` makes
  ``CA:TRUE`` certificates, which are refused as server certificates.
* CA certificates need ``basicConstraints CA:TRUE`` (critical) and ``keyUsage``;
  CA keys must be RSA (2048 bits or more) or ECDSA P-256/P-384/P-521, and
  certificates must be signed with RSA PKCS#1 v1.5 / RSA-PSS (SHA-256/384/512) or
  ECDSA: Ed25519 and Ed448 CAs are refused (an Ed25519 *end-entity* key signed by
  an RSA or ECDSA CA is fine), and so are SHA-1 signatures.
* Wildcards match exactly one leftmost label (``*.example.com`` matches
  ``a.example.com``, not ``a.b.example.com``); IP addresses only match IP
  address entries.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import ipaddress
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import Any

import certifi
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import PublicKeyAlgorithmOID
from cryptography.x509.verification import (
    PolicyBuilder,
    ServerVerifier,
    Store,
    Subject,
    VerificationError,
)

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

__all__ = [
    "CERTIFICATE_SIGNATURE_ALGORITHMS",
    "SIGNATURE_ALGORITHMS",
    "CertificateVerifier",
    "SignatureScheme",
    "choose_scheme",
    "parse_certificate_chain",
    "scheme_name",
    "schemes_for_key",
    "sign_certificate_verify",
    "verify_certificate_verify",
]


class SignatureScheme(IntEnum):
    """Signature scheme codepoints of RFC 8446 §4.2.3 that tcpls knows."""

    rsa_pkcs1_sha256 = 0x0401
    rsa_pkcs1_sha384 = 0x0501
    rsa_pkcs1_sha512 = 0x0601
    ecdsa_secp256r1_sha256 = 0x0403
    ecdsa_secp384r1_sha384 = 0x0503
    ecdsa_secp521r1_sha512 = 0x0603
    rsa_pss_rsae_sha256 = 0x0804
    rsa_pss_rsae_sha384 = 0x0805
    rsa_pss_rsae_sha512 = 0x0806
    ed25519 = 0x0807
    ed448 = 0x0808
    rsa_pss_pss_sha256 = 0x0809
    rsa_pss_pss_sha384 = 0x080A
    rsa_pss_pss_sha512 = 0x080B


_S = SignatureScheme

#: What we offer in signature_algorithms (CertificateVerify), preference order:
#: ecdsa p256, p384, p521, ed25519, ed448, rsa_pss_rsae 256/384/512, rsa_pss_pss 256/384/512
SIGNATURE_ALGORITHMS: tuple[int, ...] = (
    _S.ecdsa_secp256r1_sha256,
    _S.ecdsa_secp384r1_sha384,
    _S.ecdsa_secp521r1_sha512,
    _S.ed25519,
    _S.ed448,
    _S.rsa_pss_rsae_sha256,
    _S.rsa_pss_rsae_sha384,
    _S.rsa_pss_rsae_sha512,
    _S.rsa_pss_pss_sha256,
    _S.rsa_pss_pss_sha384,
    _S.rsa_pss_pss_sha512,
)

#: What we accept in certificates (signature_algorithms_cert): the above plus rsa_pkcs1_*.
#: (The path validation policy refuses Ed25519/Ed448-signed certificates all the same:
#: see the module documentation.)
CERTIFICATE_SIGNATURE_ALGORITHMS: tuple[int, ...] = (
    *SIGNATURE_ALGORITHMS,
    _S.rsa_pkcs1_sha256,
    _S.rsa_pkcs1_sha384,
    _S.rsa_pkcs1_sha512,
)

# Legacy codepoints that TLS 1.3 forbids in CertificateVerify (§4.4.3: no PKCS#1 v1.5;
# §4.2.3: no SHA-1), named so that error messages can say what the peer used.
_LEGACY_NAMES = {0x0201: "rsa_pkcs1_sha1", 0x0202: "dsa_sha1", 0x0203: "ecdsa_sha1"}
_FORBIDDEN_IN_VERIFY = frozenset(
    {_S.rsa_pkcs1_sha256, _S.rsa_pkcs1_sha384, _S.rsa_pkcs1_sha512, *_LEGACY_NAMES}
)

_ECDSA: dict[int, tuple[type[ec.EllipticCurve], hashes.HashAlgorithm]] = {
    _S.ecdsa_secp256r1_sha256: (ec.SECP256R1, hashes.SHA256()),
    _S.ecdsa_secp384r1_sha384: (ec.SECP384R1, hashes.SHA384()),
    _S.ecdsa_secp521r1_sha512: (ec.SECP521R1, hashes.SHA512()),
}
_RSAE: dict[int, hashes.HashAlgorithm] = {
    _S.rsa_pss_rsae_sha256: hashes.SHA256(),
    _S.rsa_pss_rsae_sha384: hashes.SHA384(),
    _S.rsa_pss_rsae_sha512: hashes.SHA512(),
}
_PSS: dict[int, hashes.HashAlgorithm] = {
    _S.rsa_pss_pss_sha256: hashes.SHA256(),
    _S.rsa_pss_pss_sha384: hashes.SHA384(),
    _S.rsa_pss_pss_sha512: hashes.SHA512(),
}

# RFC 8446 §4.4.3: 64 spaces, the context string, a zero byte, then the transcript hash.
_CONTEXTS = {
    True: b"TLS 1.3, server CertificateVerify",
    False: b"TLS 1.3, client CertificateVerify",
}


def scheme_name(scheme: int) -> str:
    """The RFC name of a signature scheme codepoint, or ``0x....`` for unknown values."""
    try:
        return SignatureScheme(scheme).name
    except ValueError:
        return _LEGACY_NAMES.get(scheme, f"0x{scheme:04x}")


def _names(schemes: Iterable[int], limit: int = 12) -> str:
    """Scheme names for a message, the list cut after ``limit`` (peers may send thousands)."""
    listed = list(dict.fromkeys(schemes))
    if not listed:
        return "none"
    text = ", ".join(scheme_name(s) for s in listed[:limit])
    if len(listed) > limit:
        text += f" and {len(listed) - limit} more"
    return text


def _signed_content(transcript_hash: bytes, server: bool) -> bytes:
    return b" " * 64 + _CONTEXTS[server] + b"\x00" + transcript_hash


def _pss(hash_algorithm: hashes.HashAlgorithm) -> padding.PSS:
    # RFC 8446 §4.2.3: MGF1 with the same hash, salt as long as the digest.
    return padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=hash_algorithm.digest_size)


def _pss_fits(key_size: int, hash_algorithm: hashes.HashAlgorithm) -> bool:
    """Whether an RSA modulus of ``key_size`` bits can carry a PSS signature with this hash."""
    em_len = (key_size - 1 + 7) // 8  # RFC 8017 §9.1.1: emLen >= hLen + sLen + 2
    return em_len >= 2 * hash_algorithm.digest_size + 2


def _key_description(key: Any) -> str:
    """``ECDSA P-256``, ``RSA 2048-bit``, ``Ed25519``...: a key type in words."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        curves = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"ECDSA {curves.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA {key.key_size}-bit"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


def schemes_for_key(
    private_key: Any, *, certificate: x509.Certificate | None = None
) -> tuple[int, ...]:
    """Schemes this private key can sign a TLS 1.3 CertificateVerify with (no pkcs1).

    In our preference order (that of :data:`SIGNATURE_ALGORITHMS`). An ECDSA key gets
    the one scheme of its curve (TLS 1.3 binds curve and hash); an RSA key the
    ``rsa_pss_rsae_*`` schemes its modulus is long enough for, or the ``rsa_pss_pss_*``
    ones when ``certificate`` is given and carries an RSASSA-PSS public key (RFC 8446
    §4.2.3: the scheme follows the certificate's key OID). Unsupported keys get ``()``.
    """
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return tuple(s for s, (curve, _) in _ECDSA.items() if isinstance(private_key.curve, curve))
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return (_S.ed25519,)
    if isinstance(private_key, ed448.Ed448PrivateKey):
        return (_S.ed448,)
    if isinstance(private_key, rsa.RSAPrivateKey):
        pss_key = (
            certificate is not None
            and certificate.public_key_algorithm_oid == PublicKeyAlgorithmOID.RSASSA_PSS
        )
        table = _PSS if pss_key else _RSAE
        return tuple(s for s, h in table.items() if _pss_fits(private_key.key_size, h))
    return ()


def choose_scheme(
    private_key: Any,
    peer_schemes: Sequence[int],
    *,
    certificate: x509.Certificate | None = None,
) -> int:
    """Our first scheme that the key supports and the peer listed.

    ``peer_schemes`` is the peer's signature_algorithms list (its order is ignored:
    ours decides). ``certificate`` is our end-entity certificate, needed only to
    sign with an RSASSA-PSS key (see :func:`schemes_for_key`). Raises
    :class:`~tcpls.errors.HandshakeFailure` ("no signature algorithm in common with
    the peer (it offers ...)") when none fits, and
    :class:`~tcpls.errors.InternalError` when our key cannot sign in TLS 1.3 at all.
    """
    ours = schemes_for_key(private_key, certificate=certificate)
    if not ours:
        raise InternalError(
            f"our {_key_description(private_key)} private key cannot sign a TLS 1.3 "
            "CertificateVerify (use ECDSA P-256/P-384/P-521, RSA, Ed25519 or Ed448)"
        )
    offered = set(peer_schemes)
    for scheme in ours:
        if scheme in offered:
            return scheme
    raise HandshakeFailure(
        f"no signature algorithm in common with the peer (it offers {_names(peer_schemes)}; "
        f"our {_key_description(private_key)} key signs with {_names(ours)})"
    )


def sign_certificate_verify(
    private_key: Any, scheme: int, transcript_hash: bytes, *, server: bool
) -> bytes:
    """The CertificateVerify signature of RFC 8446 §4.4.3.

    Signs 64 spaces ‖ context string ("TLS 1.3, server CertificateVerify" when
    ``server`` is true, else "TLS 1.3, client CertificateVerify") ‖ 0x00 ‖
    ``transcript_hash``. ``scheme`` must suit the key (normally the result of
    :func:`choose_scheme`); an RSA key may sign with ``rsa_pss_rsae_*`` or
    ``rsa_pss_pss_*`` (the signature is the same, the certificate differs).
    A scheme that does not suit the key raises :class:`~tcpls.errors.InternalError`.
    """
    data = _signed_content(transcript_hash, server)
    if scheme in _ECDSA and isinstance(private_key, ec.EllipticCurvePrivateKey):
        curve, hash_algorithm = _ECDSA[scheme]
        if isinstance(private_key.curve, curve):
            return private_key.sign(data, ec.ECDSA(hash_algorithm))
    elif (scheme in _RSAE or scheme in _PSS) and isinstance(private_key, rsa.RSAPrivateKey):
        hash_algorithm = _RSAE.get(scheme) or _PSS[scheme]
        if _pss_fits(private_key.key_size, hash_algorithm):
            return private_key.sign(data, _pss(hash_algorithm), hash_algorithm)
    elif (scheme == _S.ed25519 and isinstance(private_key, ed25519.Ed25519PrivateKey)) or (
        scheme == _S.ed448 and isinstance(private_key, ed448.Ed448PrivateKey)
    ):
        return private_key.sign(data)
    raise InternalError(
        f"cannot sign a CertificateVerify with {scheme_name(scheme)} "
        f"using our {_key_description(private_key)} key"
    )


def _public_key_of(certificate: x509.Certificate, who: str) -> Any:
    try:
        return certificate.public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise CertificateVerificationError(
            f"the {who}'s certificate has a public key tcpls cannot use ({exc})",
            AlertDescription.unsupported_certificate,
        ) from None


def _certificate_key_description(certificate: x509.Certificate, key: Any) -> str:
    if certificate.public_key_algorithm_oid == PublicKeyAlgorithmOID.RSASSA_PSS:
        return f"RSASSA-PSS {key.key_size}-bit"
    return _key_description(key)


def verify_certificate_verify(
    certificate: x509.Certificate,
    scheme: int,
    signature: bytes,
    transcript_hash: bytes,
    *,
    server: bool,
    offered: Sequence[int],
) -> None:
    """Check the peer's CertificateVerify (RFC 8446 §4.4.3) against its certificate.

    ``certificate`` is the peer's end-entity certificate, ``server`` is true when the
    peer (the signer) is the server, and ``offered`` the schemes we listed in our
    signature_algorithms. Raises :class:`~tcpls.errors.IllegalParameter` if
    ``scheme`` is PKCS#1 v1.5 or SHA-1 (forbidden in TLS 1.3), was not in
    ``offered``, or does not fit the certificate's key (e.g. ecdsa_secp384r1_sha384
    with a P-256 key, rsa_pss_pss_* with an rsaEncryption key, rsa_pss_rsae_* with an
    RSASSA-PSS key); raises ``ProtocolError(..., AlertDescription.decrypt_error)``
    when the signature does not verify (over the other side's context string, say).
    """
    who = "server" if server else "client"
    name = scheme_name(scheme)
    if scheme in _FORBIDDEN_IN_VERIFY:
        raise IllegalParameter(
            f"the {who} signed its CertificateVerify with {name}, which TLS 1.3 forbids there"
        )
    if scheme not in offered:
        raise IllegalParameter(
            f"the {who} signed its CertificateVerify with {name}, which we did not offer"
        )
    key = _public_key_of(certificate, who)
    is_pss_key = certificate.public_key_algorithm_oid == PublicKeyAlgorithmOID.RSASSA_PSS
    data = _signed_content(transcript_hash, server)
    try:
        if scheme in _ECDSA and isinstance(key, ec.EllipticCurvePublicKey):
            curve, hash_algorithm = _ECDSA[scheme]
            if isinstance(key.curve, curve):
                key.verify(signature, data, ec.ECDSA(hash_algorithm))
                return
        elif scheme in _RSAE and isinstance(key, rsa.RSAPublicKey) and not is_pss_key:
            key.verify(signature, data, _pss(_RSAE[scheme]), _RSAE[scheme])
            return
        elif scheme in _PSS and isinstance(key, rsa.RSAPublicKey) and is_pss_key:
            key.verify(signature, data, _pss(_PSS[scheme]), _PSS[scheme])
            return
        elif (scheme == _S.ed25519 and isinstance(key, ed25519.Ed25519PublicKey)) or (
            scheme == _S.ed448 and isinstance(key, ed448.Ed448PublicKey)
        ):
            key.verify(signature, data)
            return
    except (InvalidSignature, ValueError):
        raise ProtocolError(
            f"the {who}'s CertificateVerify signature ({name}) does not verify",
            AlertDescription.decrypt_error,
        ) from None
    raise IllegalParameter(
        f"the {who} signed its CertificateVerify with {name}, which does not fit its "
        f"{_certificate_key_description(certificate, key)} certificate key"
    )


def parse_certificate_chain(ders: Sequence[bytes]) -> list[x509.Certificate]:
    """The certificates of a Certificate message, from their DER encodings, in order.

    Raises :class:`~tcpls.errors.DecodeError` (``decode_error``) for bytes that are
    not a DER X.509 certificate, and :class:`~tcpls.errors.CertificateVerificationError`
    (``bad_certificate``) for a certificate whose extensions are malformed (duplicate
    or undecodable). An empty ``ders`` gives ``[]``: an empty chain is the caller's
    business (RFC 8446 §4.4.2.4 wants different alerts for clients and servers).
    """
    chain: list[x509.Certificate] = []
    for index, der in enumerate(ders, 1):
        try:
            certificate = x509.load_der_x509_certificate(bytes(der))
        except ValueError as exc:
            raise DecodeError(
                f"the peer's certificate {index} of {len(ders)} is not a DER X.509 "
                f"certificate ({exc})"
            ) from None
        try:
            certificate.extensions  # noqa: B018 -- parsed lazily: parse now
        except (ValueError, x509.DuplicateExtension) as exc:
            raise CertificateVerificationError(
                f"the peer's certificate {index} of {len(ders)} has malformed extensions ({exc})",
                AlertDescription.bad_certificate,
            ) from None
        chain.append(certificate)
    return chain


# -- trust anchors ---------------------------------------------------------------------


def _read_ca_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigurationError(f"CA file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigurationError(f"CA file is a directory: {path}") from None
    except PermissionError:
        raise ConfigurationError(f"CA file is not readable: {path}") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read CA file {path}: {exc.strerror}") from None


def _parse_anchors(data: bytes, what: str) -> tuple[x509.Certificate, ...]:
    with warnings.catch_warnings():
        # certifi carries a root with a zero serial number; cryptography warns on load.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            certificates = tuple(x509.load_pem_x509_certificates(data))
        except ValueError:
            certificates = ()
    if not certificates:
        raise ConfigurationError(f"{what} holds no PEM CA certificate")
    return certificates


@functools.lru_cache(maxsize=16)
def _file_anchors(path: str, mtime_ns: int, size: int) -> tuple[x509.Certificate, ...]:
    """The certificates of one version of a CA file: each version is parsed once."""
    return _parse_anchors(_read_ca_file(path), f"the CA file {path}")


def _load_file_anchors(path: str) -> tuple[x509.Certificate, ...]:
    try:
        stat = os.stat(path)
    except OSError:
        _read_ca_file(path)  # raises the right ConfigurationError
        raise
    return _file_anchors(path, stat.st_mtime_ns, stat.st_size)


# -- path validation ---------------------------------------------------------------------

_MAX_NAMES_SHOWN = 8
_MAX_SUBJECTS_TRIED = 64  # names of a certificate tried when there is no server name
_MAX_TEXT = 120
_ALGORITHM_PARAMS = re.compile(r"params: (\w+)")
_EXTENSION_OID = re.compile(r"invalid extension: ([0-9.]+)")


def _printable(text: str) -> str:
    """``text`` safe for a one-line message: control characters escaped, length capped."""
    safe = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return safe if len(safe) <= _MAX_TEXT else safe[: _MAX_TEXT - 3] + "..."


def _dn(name: x509.Name) -> str:
    try:
        text = name.rfc4514_string()
    except ValueError:
        text = ""
    return _printable(text) or "(an empty name)"


def _when(moment: datetime.datetime) -> str:
    if moment.time() == datetime.time(0, 0):
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _san_names(certificate: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for (possibly hostile text)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except (x509.ExtensionNotFound, ValueError, x509.DuplicateExtension):
        return []
    return [_printable(n) for n in names]


def _valid_for(certificate: x509.Certificate) -> str:
    names = _san_names(certificate)
    if not names:
        return "names no host"
    shown = ", ".join(names[:_MAX_NAMES_SHOWN])
    if len(names) > _MAX_NAMES_SHOWN:
        shown += f" and {len(names) - _MAX_NAMES_SHOWN} more"
    return f"is valid for {shown}"


def _is_self_signed(certificate: x509.Certificate) -> bool:
    if certificate.subject != certificate.issuer:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except Exception:  # any failure (bad signature, odd key type): not self-signed
        return False
    return True


def _moment(now: datetime.datetime | None) -> datetime.datetime:
    """The validation time: ``now``, naive meaning UTC, or the current time."""
    if now is None:
        return datetime.datetime.now(datetime.UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=datetime.UTC)


def _subject_for(server_name: str) -> Subject:
    """The verification subject of a server name: an IP address literal or a DNS name.

    Brackets around an IPv6 literal and an IPv6 zone (``%eth0``) are dropped; so is one
    trailing dot of a DNS name; an internationalized name is converted to its ASCII
    (IDNA) form. A name cryptography cannot use raises ``ValueError``.
    """
    name = server_name
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    literal = name.split("%", 1)[0] if ":" in name else name
    try:
        return x509.IPAddress(ipaddress.ip_address(literal))
    except ValueError:
        pass
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("invalid domain name") from None
    return x509.DNSName(name)


def _subjects_of(certificate: x509.Certificate) -> list[Subject]:
    """Names the certificate is valid for, as verification subjects (for no server name)."""
    subjects: list[Subject] = []
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError, x509.DuplicateExtension):
        return subjects
    for dns in san.get_values_for_type(x509.DNSName):
        if dns.startswith("*."):
            dns = "tcpls-any" + dns[1:]
        try:
            subjects.append(x509.DNSName(dns))
        except ValueError:
            continue
    subjects += [x509.IPAddress(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return subjects


class CertificateVerifier:
    """Validates a peer's certificate chain with :mod:`cryptography.x509.verification`.

    The trust anchors are the PEM certificates of ``cafile`` and ``cadata`` (both,
    when both are given), else certifi's bundle (``certifi.where()``). They are read
    when the verifier is made (a missing, unreadable or empty CA file raises
    :class:`~tcpls.errors.ConfigurationError`) and kept for its life; each version of
    a CA file is parsed once per process. ``max_chain_depth`` is the number of
    intermediate CA certificates allowed between the peer's certificate and a trust
    anchor (0 to 255).

    The policy is cryptography's web PKI profile; the module documentation lists
    what it accepts and refuses. Every refusal raises
    :class:`~tcpls.errors.CertificateVerificationError` with one of these alerts:
    ``unknown_ca`` (no path to a trust anchor, a self-signed certificate that is not
    trusted, an issuer that is not a CA), ``certificate_expired`` (a certificate of
    the chain outside its validity period, expired or not yet valid),
    ``bad_certificate`` (name mismatch, malformed or misused certificate),
    ``unsupported_certificate`` (wrong extended key usage, key or signature
    algorithm the policy forbids, unknown critical extension).
    """

    def __init__(
        self, *, cafile: str | None = None, cadata: bytes | None = None, max_chain_depth: int = 8
    ) -> None:
        if not 0 <= max_chain_depth <= 255:
            raise ValueError(f"max_chain_depth must be within 0..255, not {max_chain_depth}")
        anchors: list[x509.Certificate] = []
        if cafile is not None:
            anchors += _load_file_anchors(os.fspath(cafile))
        if cadata is not None:
            anchors += _parse_anchors(bytes(cadata), "cadata")
        if cafile is None and cadata is None:
            anchors += _load_file_anchors(certifi.where())
        self._anchors = tuple(dict.fromkeys(anchors))
        self._anchor_set = frozenset(self._anchors)
        self._store = Store(list(self._anchors))
        self.max_chain_depth = max_chain_depth

    def _builder(self, now: datetime.datetime) -> PolicyBuilder:
        return PolicyBuilder().store(self._store).time(now).max_chain_depth(self.max_chain_depth)

    def verify_server(
        self,
        chain: Sequence[x509.Certificate],
        server_name: str | None,
        now: datetime.datetime | None = None,
    ) -> None:
        """Validate a server's chain (``chain[0]`` is its certificate) for ``server_name``.

        ``server_name`` is a DNS name or an IP address literal (IPv4, or IPv6 with or
        without brackets): a literal must match an IP address entry of the
        certificate's subjectAltName, a name a DNS entry (wildcards allowed). With
        ``None`` the name is **not checked**: anyone holding a certificate from a
        trusted CA passes, so use it only when the trust anchors are private to the
        service; the certificate must still have a subjectAltName and the chain
        must still be valid. ``now`` (default: the current time; naive means UTC) is
        the validation time. An empty chain raises ``decode_error`` (RFC 8446
        §4.4.2.4); other refusals are listed in the class documentation.
        """
        if not chain:
            raise CertificateVerificationError(
                "the server sent no certificate", AlertDescription.decode_error
            )
        leaf, intermediates = chain[0], list(chain[1:])
        moment = _moment(now)
        builder = self._builder(moment)
        verifiers: list[ServerVerifier] = []
        if server_name is not None:
            try:
                verifiers.append(builder.build_server_verifier(_subject_for(server_name)))
            except ValueError:
                raise CertificateVerificationError(
                    f"the certificate {_valid_for(leaf)}, not for {_printable(server_name)!r} "
                    "(not a valid host name or IP address)",
                    AlertDescription.bad_certificate,
                ) from None
        else:
            # No name to check: verify for each name the certificate itself gives until
            # one passes (a placeholder when it gives none, so that the policy says why).
            subjects = _subjects_of(leaf)[:_MAX_SUBJECTS_TRIED]
            for subject in subjects or [x509.DNSName("invalid.invalid")]:
                with contextlib.suppress(ValueError):  # a name cryptography cannot use
                    verifiers.append(builder.build_server_verifier(subject))
            if not verifiers:
                raise CertificateVerificationError(
                    "certificate verification failed: the certificate names no host name "
                    "or IP address tcpls can check",
                    AlertDescription.bad_certificate,
                )
        for index, verifier in enumerate(verifiers):
            try:
                verifier.verify(leaf, intermediates)
                return
            except VerificationError as exc:
                reason = str(exc)
                if "no matching subjectAltName" in reason and index + 1 < len(verifiers):
                    continue  # no server name: try the certificate's next name
                raise self._explain(reason, chain, moment, server_name, "server") from None

    def verify_client(
        self, chain: Sequence[x509.Certificate], now: datetime.datetime | None = None
    ) -> None:
        """Validate a client's chain (``chain[0]`` is its certificate).

        Uses cryptography's client profile: the same chain rules as for servers, no
        name to match, but the certificate must carry a subjectAltName (of any kind:
        DNS, email, URI...) and, if it has an extended key usage, ``clientAuth``.
        ``now`` as in :meth:`verify_server`. An empty chain raises
        ``certificate_required`` (RFC 8446 §4.4.2.4).
        """
        if not chain:
            raise CertificateVerificationError(
                "the client sent no certificate", AlertDescription.certificate_required
            )
        moment = _moment(now)
        try:
            self._builder(moment).build_client_verifier().verify(chain[0], list(chain[1:]))
        except VerificationError as exc:
            raise self._explain(str(exc), chain, moment, None, "client") from None
        except x509.UnsupportedGeneralNameType as exc:
            raise CertificateVerificationError(
                f"certificate verification failed: the client certificate has a name of a "
                f"kind tcpls cannot check ({exc})",
                AlertDescription.unsupported_certificate,
            ) from None

    # -- explaining a refusal -----------------------------------------------------------

    def _explain(
        self,
        message: str,
        chain: Sequence[x509.Certificate],
        now: datetime.datetime,
        server_name: str | None,
        role: str,
    ) -> CertificateVerificationError:
        """Turn a cryptography ``VerificationError`` message into our error and alert.

        cryptography reports ``validation failed: <reason> (encountered processing
        <certificate>)``; a failure while looking for an issuer is prefixed with
        ``candidates exhausted:`` and carries the last candidate's reason.
        """
        leaf = chain[0]
        reason = message.removeprefix("validation failed: ")
        in_chain = reason.startswith("candidates exhausted: ")
        while reason.startswith("candidates exhausted: "):
            reason = reason.removeprefix("candidates exhausted: ")
        reason = reason.split(" (encountered processing ", 1)[0]
        low = reason.lower()
        A = AlertDescription

        def fail(text: str, alert: AlertDescription) -> CertificateVerificationError:
            return CertificateVerificationError(f"certificate verification failed: {text}", alert)

        if _is_self_signed(leaf) and leaf not in self._anchor_set:
            return fail("self-signed certificate (not trusted)", A.unknown_ca)
        if "not valid at validation time" in low:
            return self._validity(chain, now)
        if "no matching subjectaltname" in low:
            if server_name is None:
                return fail(
                    "the certificate names no host name or IP address tcpls can check",
                    A.bad_certificate,
                )
            return CertificateVerificationError(
                f"the certificate {_valid_for(leaf)}, not for {_printable(server_name)}",
                A.bad_certificate,
            )
        if not in_chain:  # the leaf itself does not fit the profile
            if "2.5.29.17" in reason or "no subjectaltname" in low:
                return fail(
                    f"the {role} certificate has no subjectAltName extension (the Common "
                    "Name is not used)",
                    A.bad_certificate,
                )
            if "required eku not found" in low:
                usage = "serverAuth" if role == "server" else "clientAuth"
                return fail(
                    f"the certificate is not for TLS {role}s (its extended key usage "
                    f"lacks {usage})",
                    A.unsupported_certificate,
                )
            if "must not be asserted in an ee" in low:
                return fail(
                    f"the {role} certificate is a CA certificate (basicConstraints CA:TRUE)",
                    A.bad_certificate,
                )
            if "keycertsign" in low:
                return fail(
                    f"the {role} certificate's key usage is for CAs (keyCertSign)",
                    A.bad_certificate,
                )
            if "2.5.29.35" in reason:
                return fail(
                    f"the {role} certificate has no authorityKeyIdentifier extension",
                    A.bad_certificate,
                )
            if "unaccounted-for critical" in low:
                found = _EXTENSION_OID.search(reason)
                oid = f" ({found.group(1)})" if found else ""
                return fail(
                    f"the {role} certificate has an unsupported critical extension{oid}",
                    A.unsupported_certificate,
                )
            if "asn.1 parsing error" in low:
                return fail(
                    f"the {role} certificate is malformed ({_printable(reason)})",
                    A.bad_certificate,
                )
            return fail(f"bad {role} certificate ({_printable(reason)})", A.bad_certificate)
        if (
            "signature does not match" in low
            or "all candidates exhausted" in low
            or "exceeds max depth" in low
            or "malformed public key" in low
        ):
            return self._unknown_issuer(chain, low)
        if "basicconstraints" in low or "2.5.29.19" in reason:
            return fail(
                "an issuer in the chain is not a CA certificate (basicConstraints)",
                A.unknown_ca,
            )
        if "forbidden public key algorithm" in low or "forbidden signature algorithm" in low:
            what = "key" if "public key" in low else "signature"
            found = _ALGORITHM_PARAMS.search(reason)
            algorithm = f" ({found.group(1)})" if found else ""
            return fail(
                f"a CA {what} algorithm in the chain{algorithm} is not accepted "
                "(RSA or ECDSA P-256/P-384/P-521 with SHA-256/384/512 only)",
                A.unsupported_certificate,
            )
        if "rsa key is too weak" in low:
            return fail(
                "a CA in the chain has an RSA key shorter than 2048 bits",
                A.unsupported_certificate,
            )
        if "path length" in low:
            return fail("the chain breaks a CA's path length constraint", A.bad_certificate)
        if "name constraint" in low:
            return fail(
                f"the certificate's names break a CA's name constraints ({_printable(reason)})",
                A.bad_certificate,
            )
        if "2.5.29.15" in reason:
            return fail("a CA certificate in the chain has no keyUsage", A.bad_certificate)
        return fail(f"bad certificate chain ({_printable(reason)})", A.bad_certificate)

    def _issuers(self, chain: Sequence[x509.Certificate]) -> list[x509.Certificate]:
        """The leaf, then the certificates of ``chain`` that issue one another in turn."""
        path = [chain[0]]
        spare = list(chain[1:])
        while True:
            nxt = next((c for c in spare if c.subject == path[-1].issuer), None)
            if nxt is None or path[-1].subject == path[-1].issuer:
                return path
            spare.remove(nxt)
            path.append(nxt)

    def _unknown_issuer(
        self, chain: Sequence[x509.Certificate], reason: str
    ) -> CertificateVerificationError:
        top = self._issuers(chain)[-1]
        issuer = _dn(top.issuer)
        if "exceeds max depth" in reason:
            detail = f"no trusted CA within {self.max_chain_depth} intermediate certificates"
        elif any(a.subject == top.issuer for a in self._anchors):
            detail = f"a trusted CA is named {issuer} but did not sign it"
        else:
            detail = f"issuer: {issuer}"
        return CertificateVerificationError(
            f"certificate verification failed: unknown issuer (not signed by a trusted CA; "
            f"{detail})",
            AlertDescription.unknown_ca,
        )

    def _validity(
        self, chain: Sequence[x509.Certificate], now: datetime.datetime
    ) -> CertificateVerificationError:
        """Which certificate of the chain (or trust anchor) is outside its validity period."""
        path = self._issuers(chain)
        anchors = [a for a in self._anchors if any(a.subject == c.issuer for c in path)]
        for position, certificate in enumerate([*path, *chain[1:], *anchors]):
            start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
            if start <= now <= end:
                continue
            if position == 0:
                what = "the certificate"
            elif certificate in self._anchor_set:
                what = f"the trusted CA certificate {_dn(certificate.subject)}"
            else:
                what = f"the CA certificate {_dn(certificate.subject)}"
            when = (
                f"expired on {_when(end)}" if now > end else f"is not valid before {_when(start)}"
            )
            return CertificateVerificationError(
                f"certificate verification failed: {what} {when}",
                AlertDescription.certificate_expired,
            )
        return CertificateVerificationError(
            "certificate verification failed: a certificate of the chain is outside its "
            "validity period",
            AlertDescription.certificate_expired,
        )
