"""Crashes found by fuzzing whose bug in src is still open.

Each entry names the crash inputs under ``crashes/`` (replayed by ``test_fuzz.py`` as a
strict xfail while the entry is here) and how to recognise the failure, so that
``python -m tests.fuzz.run --skip-known TARGET ...`` keeps fuzzing past it to find the
next one. Remove the entry when the fix lands.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KNOWN_BUGS", "KnownBug", "is_known"]


@dataclass(frozen=True)
class KnownBug:
    """One open bug: its crash input, and the exception (anywhere in the chain) it raises."""

    crashes: tuple[str, ...]  # paths under tests/fuzz/crashes/, "<target>/<name>"
    targets: tuple[str, ...]  # the targets that fail on it
    exception: str  # class name of the exception, in the raised one or its causes
    message: str  # a part of that exception's message
    summary: str


KNOWN_BUGS: tuple[KnownBug, ...] = (
    KnownBug(
        crashes=("handshake_engine/x25519-all-zero-share",),
        targets=("handshake_engine",),
        exception="ValueError",
        message="Error computing shared key",
        summary="an all-zero (low-order) X25519 share makes cryptography raise ValueError in "
        "groups._x25519 before its all-zero check: it must be an illegal_parameter",
    ),
    KnownBug(
        crashes=("handshake_engine/certificate-subject-not-utf8",),
        targets=("handshake_engine",),
        exception="ValueError",
        message="error parsing asn1 value",
        summary="a peer certificate whose subject does not decode (a UTF8String that is not "
        "UTF-8) passes certs.parse_certificate_chain, then raises ValueError when a failed "
        "validation is explained: it must be a bad_certificate",
    ),
    KnownBug(
        crashes=("handshake_engine/certificate-issuer-bit-string",),
        targets=("handshake_engine",),
        exception="TypeError",
        message="oid must be X500_UNIQUE_IDENTIFIER",
        summary="a peer certificate whose issuer has a BIT STRING common name passes "
        "certs.parse_certificate_chain, then raises TypeError when a failed validation is "
        "explained: it must be a bad_certificate",
    ),
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_known(target: str, exc: BaseException) -> KnownBug | None:
    """The open bug ``exc`` (raised by ``target``) is an instance of, if any."""
    for bug in KNOWN_BUGS:
        if target not in bug.targets:
            continue
        for link in _chain(exc):
            if type(link).__name__ == bug.exception and bug.message in str(link):
                return bug
    return None
