"""Events produced by :class:`tcpls.tls.connection.TLSConnection`.

Small immutable values. Application data is not an event: it is handed to the
connection's data handler as it is decrypted (see ``TLSConnection``), so the
hot path allocates nothing per record.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcpls.errors import TCPLSError
from tcpls.tls.hello import ClientHelloInfo
from tcpls.tls.hs.tickets import SessionTicket
from tcpls.tls.record import CipherSuite

__all__ = [
    "CloseNotifyReceived",
    "ConnectionFailed",
    "Event",
    "HandshakeCompleted",
    "HandshakeConfirmed",
    "JoinRequested",
    "SessionTicketReceived",
    "TransportEnded",
]


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """The handshake finished; application data may flow.

    ``tcpls`` says whether TCPLS was negotiated (otherwise the connection is
    plain TLS 1.3, design: Fallback). ``token`` is the ``tcpls_token`` a client received.
    ``joined`` is true for a connection joined to an existing session.
    ``early_data_accepted`` says whether the server took the client's early data
    (design: Early data): if not, the client sends those bytes again.
    """

    tcpls: bool
    cipher_suite: CipherSuite
    session_resumed: bool = False
    alpn_protocol: str | None = None
    token: bytes | None = None
    joined: bool = False
    early_data_accepted: bool = False


@dataclass(frozen=True, slots=True)
class HandshakeConfirmed:
    """Server that accepted early data: the client's Finished verified.

    Such a server reports :class:`HandshakeCompleted` as soon as its own flight is out,
    so that it reads the early data and answers at once (RFC 8446 §4.4.4 lets it send
    then); the client's Finished comes a round trip later (design: Early data).
    """


@dataclass(frozen=True, slots=True)
class JoinRequested:
    """Server side: the first ClientHello carries ``tcpls_join``.

    The connection waits until its owner calls ``accept_join`` or
    ``reject_join``.
    """

    token: bytes
    client_hello: ClientHelloInfo


@dataclass(frozen=True, slots=True)
class SessionTicketReceived:
    """Client side: the server issued a ticket for PSK resumption."""

    ticket: SessionTicket


@dataclass(frozen=True, slots=True)
class CloseNotifyReceived:
    """The peer sent ``close_notify``: it will send no more data (end of stream)."""


@dataclass(frozen=True, slots=True)
class TransportEnded:
    """The TCP connection delivered EOF after the handshake.

    ``close_notify_received`` tells a clean end (``close_notify`` came first)
    from a truncation; what a bare EOF means is the session's decision
    (design: Failure detection, Closing).
    """

    close_notify_received: bool


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """The connection is dead.

    ``error`` is a :class:`tcpls.errors.ProtocolError` we detected (its alert
    was queued for the peer), a :class:`tcpls.errors.PeerAlert` the peer sent,
    or another :class:`tcpls.errors.TCPLSError`.
    """

    error: TCPLSError


#: Any event a TLS connection reports to its owner.
Event = (
    HandshakeCompleted
    | HandshakeConfirmed
    | JoinRequested
    | SessionTicketReceived
    | CloseNotifyReceived
    | TransportEnded
    | ConnectionFailed
)
