"""Certificate path validation for the TLS 1.3 handshake, with
:mod:`cryptography.x509.verification`.

:class:`CertificateVerifier` builds a path from the peer's certificate to a trusted CA
and turns every refusal into a :class:`~tcpls.errors.CertificateVerificationError`
carrying the right alert and one readable line. The signatures of CertificateVerify
are in :mod:`tcpls.tls.hs.signatures`.

The verification policy is cryptography's "web PKI" profile (CA/Browser Forum
baseline requirements), unchanged. What matters to users:

* The end-entity certificate must carry a ``subjectAltName`` (the Common Name is
  never used as a host name) and an ``authorityKeyIdentifier``, must not be a CA
  certificate (``basicConstraints CA:TRUE``), and, if it has an extended key usage,
  it must list ``serverAuth`` (servers) or ``clientAuth`` (clients).
* A self-signed certificate that is itself in the trust store (pinned) is accepted as
  it is, whatever its shape (``openssl req -x509`` marks it a CA), the way OpenSSL
  accepts it: within its validity period, for the names of its subjectAltName or, when
  it has none, its Common Name.
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
import os
import re
import warnings
from collections.abc import Sequence

import certifi
from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.verification import (
    PolicyBuilder,
    ServerVerifier,
    Store,
    VerificationError,
)

from tcpls.errors import (
    AlertDescription,
    CertificateVerificationError,
    ConfigurationError,
    DecodeError,
)
from tcpls.tls.hs.names import (
    MAX_NAMES_SHOWN,
    dn,
    is_self_signed,
    name_matches,
    pinned_names,
    printable,
    subject_for,
    subjects_of,
    valid_for,
    when,
)

__all__ = ["MAX_CHAIN_CERTIFICATES", "CertificateVerifier", "parse_certificate_chain"]


#: Certificates of a peer's chain that are read at most (a leaf and intermediates; real
#: chains have two to four).
MAX_CHAIN_CERTIFICATES = 16


def parse_certificate_chain(ders: Sequence[bytes]) -> list[x509.Certificate]:
    """The certificates of a Certificate message, from their DER encodings, in order.

    Raises :class:`~tcpls.errors.DecodeError` (``decode_error``) for bytes that are
    not a DER X.509 certificate, and :class:`~tcpls.errors.CertificateVerificationError`
    (``bad_certificate``) for a certificate whose names or extensions are malformed
    (duplicate or undecodable). An empty ``ders`` gives ``[]``: an empty chain is the caller's
    business (RFC 8446 §4.4.2.4 wants different alerts for clients and servers).
    """
    if len(ders) > MAX_CHAIN_CERTIFICATES:
        raise CertificateVerificationError(
            f"the peer sent {len(ders)} certificates (at most {MAX_CHAIN_CERTIFICATES} are read)",
            AlertDescription.bad_certificate,
        )
    chain: list[x509.Certificate] = []
    for index, der in enumerate(ders, 1):
        try:
            certificate = x509.load_der_x509_certificate(bytes(der))
        except (ValueError, x509.InvalidVersion):
            raise DecodeError(
                f"the peer's certificate {index} of {len(ders)} is not a DER X.509 certificate"
            ) from None
        try:
            certificate.extensions  # noqa: B018 -- parsed lazily: parse now
            certificate.subject.rfc4514_string()  # and the names, which errors quote
            certificate.issuer.rfc4514_string()
        except (ValueError, TypeError, x509.DuplicateExtension):
            raise CertificateVerificationError(
                f"the peer's certificate {index} of {len(ders)} is malformed (its names or "
                "extensions do not decode)",
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

_MAX_SUBJECTS_TRIED = 64  # names of a certificate tried when there is no server name
_ALGORITHM_PARAMS = re.compile(r"params: (\w+)")
_EXTENSION_OID = re.compile(r"invalid extension: ([0-9.]+)")


def _moment(now: datetime.datetime | None) -> datetime.datetime:
    """The validation time: ``now``, naive meaning UTC, or the current time."""
    if now is None:
        return datetime.datetime.now(datetime.UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=datetime.UTC)


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
                verifiers.append(builder.build_server_verifier(subject_for(server_name)))
            except ValueError:
                raise CertificateVerificationError(
                    f"the certificate {valid_for(leaf)}, not for {printable(server_name)!r} "
                    "(not a valid host name or IP address)",
                    AlertDescription.bad_certificate,
                ) from None
        else:
            # No name to check: verify for each name the certificate itself gives until
            # one passes (a placeholder when it gives none, so that the policy says why).
            subjects = subjects_of(leaf)[:_MAX_SUBJECTS_TRIED]
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
                if self._pinned(leaf, server_name, moment):
                    return
                raise self._explain(reason, chain, moment, server_name, "server") from None

    def _pinned(
        self, leaf: x509.Certificate, server_name: str | None, moment: datetime.datetime
    ) -> bool:
        """Whether ``leaf`` is itself a trust anchor, within its validity, for the name.

        A self-signed certificate the user put in the CA file is trusted as it is, the
        way OpenSSL trusts it, even with the shape the web PKI profile refuses for an
        end-entity certificate (``openssl req -x509`` marks it a CA). Its name is its
        subjectAltName entries or, when it has none, its Common Name.
        """
        if leaf not in self._anchor_set:
            return False
        if not leaf.not_valid_before_utc <= moment <= leaf.not_valid_after_utc:
            return False
        if server_name is None:
            return True
        names = pinned_names(leaf)
        try:
            wanted = subject_for(server_name)
        except ValueError:
            return False
        if any(name_matches(wanted, name) for name in names):
            return True
        shown = ", ".join(printable(str(n.value)) for n in names[:MAX_NAMES_SHOWN])
        raise CertificateVerificationError(
            f"the certificate is valid for {shown or 'no host'}, not for {printable(server_name)}",
            AlertDescription.bad_certificate,
        )

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
            if self._pinned(chain[0], None, moment):
                return
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

        if is_self_signed(leaf) and leaf not in self._anchor_set:
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
                f"the certificate {valid_for(leaf)}, not for {printable(server_name)}",
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
                    f"the {role} certificate is malformed ({printable(reason)})",
                    A.bad_certificate,
                )
            return fail(f"bad {role} certificate ({printable(reason)})", A.bad_certificate)
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
                f"the certificate's names break a CA's name constraints ({printable(reason)})",
                A.bad_certificate,
            )
        if "2.5.29.15" in reason:
            return fail("a CA certificate in the chain has no keyUsage", A.bad_certificate)
        return fail(f"bad certificate chain ({printable(reason)})", A.bad_certificate)

    def _issuers(self, chain: Sequence[x509.Certificate]) -> list[x509.Certificate]:
        """The leaf, then the certificates of ``chain`` that issue one another in turn."""
        by_subject: dict[x509.Name, list[x509.Certificate]] = {}
        for certificate in chain[1:]:
            by_subject.setdefault(certificate.subject, []).append(certificate)
        path = [chain[0]]
        # at most one more step than a valid path may have: a hostile chain is long
        for _ in range(self.max_chain_depth + 1):
            candidates = by_subject.get(path[-1].issuer)
            if not candidates or path[-1].subject == path[-1].issuer:
                break
            path.append(candidates.pop(0))
        return path

    def _unknown_issuer(
        self, chain: Sequence[x509.Certificate], reason: str
    ) -> CertificateVerificationError:
        top = self._issuers(chain)[-1]
        issuer = dn(top.issuer)
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
                what = f"the trusted CA certificate {dn(certificate.subject)}"
            else:
                what = f"the CA certificate {dn(certificate.subject)}"
            period = (
                f"expired on {when(end)}" if now > end else f"is not valid before {when(start)}"
            )
            return CertificateVerificationError(
                f"certificate verification failed: {what} {period}",
                AlertDescription.certificate_expired,
            )
        return CertificateVerificationError(
            "certificate verification failed: a certificate of the chain is outside its "
            "validity period",
            AlertDescription.certificate_expired,
        )
