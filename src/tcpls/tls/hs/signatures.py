"""Signatures of the TLS 1.3 handshake: CertificateVerify (RFC 8446 §4.4.3).

Which signature schemes we offer and accept, choosing one for our own key, signing the
transcript hash, and checking the peer's signature against the key of its end-entity
certificate. Certificate path validation is in :mod:`tcpls.tls.hs.certs`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import PublicKeyAlgorithmOID

from tcpls.errors import (
    AlertDescription,
    CertificateVerificationError,
    HandshakeFailure,
    IllegalParameter,
    InternalError,
    ProtocolError,
)

__all__ = [
    "CERTIFICATE_SIGNATURE_ALGORITHMS",
    "SIGNATURE_ALGORITHMS",
    "SignatureScheme",
    "choose_scheme",
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
