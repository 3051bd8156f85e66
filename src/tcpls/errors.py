"""The exceptions of tcpls, and the one table that maps them to TLS alerts.

Every error tcpls raises is a :class:`TCPLSError`. Protocol violations detected
locally are :class:`ProtocolError` subclasses; each carries the TLS alert that
is sent to the peer before the connection closes (``alert``). A fatal alert sent
by the peer surfaces as :class:`PeerAlert`. Errors that happen before or outside
the protocol (bad configuration, unreachable hosts) have their own classes so a
command line can print one clear line for each.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "AlertDescription",
    "BadRecordMac",
    "CertificateVerificationError",
    "ConfigurationError",
    "ConnectionClosedError",
    "DecodeError",
    "HandshakeCanceled",
    "HandshakeFailure",
    "IllegalParameter",
    "InternalError",
    "NotTLSError",
    "PeerAlert",
    "ProtocolError",
    "RecordOverflow",
    "TCPLSError",
    "UnexpectedMessage",
    "alert_name",
    "raisable",
]


class AlertDescription(IntEnum):
    """TLS alert descriptions (RFC 8446 §6) that tcpls sends or names."""

    close_notify = 0
    unexpected_message = 10
    bad_record_mac = 20
    record_overflow = 22
    handshake_failure = 40
    bad_certificate = 42
    unsupported_certificate = 43
    certificate_revoked = 44
    certificate_expired = 45
    certificate_unknown = 46
    illegal_parameter = 47
    unknown_ca = 48
    access_denied = 49
    decode_error = 50
    decrypt_error = 51
    protocol_version = 70
    insufficient_security = 71
    internal_error = 80
    inappropriate_fallback = 86
    user_canceled = 90
    missing_extension = 109
    unsupported_extension = 110
    unrecognized_name = 112
    bad_certificate_status_response = 113
    unknown_psk_identity = 115
    certificate_required = 116
    no_application_protocol = 120


def alert_name(description: int) -> str:
    """The RFC name of an alert description, or ``alert <n>`` for unknown values."""
    try:
        return AlertDescription(description).name
    except ValueError:
        return f"alert {description}"


class TCPLSError(Exception):
    """Base class of every error raised by tcpls."""


class ConfigurationError(TCPLSError):
    """Invalid configuration: a missing or unreadable certificate or key file, a bad value."""


class ConnectionClosedError(TCPLSError):
    """The session or connection is closed; no more data can be sent or received."""


class ProtocolError(TCPLSError):
    """A protocol violation detected locally. ``alert`` is sent to the peer, then we close."""

    alert: AlertDescription = AlertDescription.internal_error

    def __init__(self, message: str = "", alert: AlertDescription | None = None) -> None:
        if alert is not None:
            self.alert = alert
        super().__init__(message or alert_name(self.alert).replace("_", " "))


class DecodeError(ProtocolError):
    """Malformed or truncated message, frame or extension body (``decode_error``)."""

    alert = AlertDescription.decode_error


class NotTLSError(DecodeError):
    """The bytes received are not TLS records at all (an HTTP server, say).

    ``sent`` describes the first bytes in words; ``peer`` is ``"server"`` or
    ``"client"`` once the receiving side is known, else ``"peer"``.
    """

    def __init__(self, sent: str, peer: str = "peer") -> None:
        self.sent = sent
        self.peer = peer
        who = f"a TLS {peer}" if peer != "peer" else "speaking TLS"
        super().__init__(f"the peer is not {who}: it sent {sent}")


class UnexpectedMessage(ProtocolError):
    """A message or record that is not allowed in the current state (``unexpected_message``)."""

    alert = AlertDescription.unexpected_message


class IllegalParameter(ProtocolError):
    """A field with a forbidden value: bad token, wrong stream parity (``illegal_parameter``)."""

    alert = AlertDescription.illegal_parameter


class BadRecordMac(ProtocolError):
    """A record failed authentication (``bad_record_mac``)."""

    alert = AlertDescription.bad_record_mac


class RecordOverflow(ProtocolError):
    """A record longer than RFC 8446 allows (``record_overflow``)."""

    alert = AlertDescription.record_overflow


class HandshakeFailure(ProtocolError):
    """No acceptable set of security parameters (``handshake_failure``)."""

    alert = AlertDescription.handshake_failure


class HandshakeCanceled(ProtocolError):
    """A server refuses to start a session now (too many sessions, out of memory).

    Sent as ``user_canceled`` followed by ``close_notify`` (RFC 8446 §6.1: canceling
    a handshake for a reason unrelated to a protocol failure).
    """

    alert = AlertDescription.user_canceled


class InternalError(ProtocolError):
    """A local failure unrelated to the peer (``internal_error``)."""

    alert = AlertDescription.internal_error


class CertificateVerificationError(ProtocolError):
    """The peer's certificate failed verification (chain, validity dates or name)."""

    alert = AlertDescription.bad_certificate


class PeerAlert(TCPLSError):
    """The peer sent a fatal TLS alert; ``alert`` is its description."""

    def __init__(self, alert: int, message: str = "") -> None:
        self.alert = alert
        super().__init__(message or f"peer sent alert {alert_name(alert)} ({alert})")


def raisable(error: TCPLSError) -> TCPLSError:
    """A copy of a stored ``error`` (same class, message and alert) to raise.

    A session keeps the error that ended it. Raising that object itself would attach
    the frames it passes through to it, and those frames refer back to the session: a
    reference cycle that keeps a finished session's memory until a full garbage
    collection. Each raise gets its own copy instead.
    """
    copy = error.__class__.__new__(error.__class__)
    copy.__dict__.update(error.__dict__)
    copy.args = error.args
    return copy
