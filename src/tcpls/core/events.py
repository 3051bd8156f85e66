"""Events a :class:`tcpls.core.session.CoreSession` reports to its I/O layer.

Stream readiness is not an event: the session keeps sets of stream IDs that
became readable or writable (``CoreSession.readable``, ``CoreSession.writable``), which
costs nothing per record on the data path.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcpls.errors import TCPLSError

__all__ = [
    "AddressAdvertised",
    "ConnectionAdded",
    "ConnectionRemoved",
    "PeerClosed",
    "SessionClosed",
    "SessionEstablished",
    "SessionEvent",
    "StreamOpened",
    "TokenReceived",
]


@dataclass(frozen=True, slots=True)
class SessionEstablished:
    """The session is established; ``tcpls`` is false in plain TLS fallback (design: Fallback)."""

    tcpls: bool


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened stream ``stream_id``."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class TokenReceived:
    """Client: the server gave a join token (``sequence`` becomes the Connection ID)."""

    sequence: int


@dataclass(frozen=True, slots=True)
class ConnectionAdded:
    """A TCP connection joined the session."""

    connection_id: int


@dataclass(frozen=True, slots=True)
class ConnectionRemoved:
    """A TCP connection left the session: ``error`` is ``None`` for a graceful removal."""

    connection_id: int
    error: TCPLSError | None


@dataclass(frozen=True, slots=True)
class AddressAdvertised:
    """The peer advertised an address of its own (New Address; design: Addresses)."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer sent ``close_notify``: it will send nothing more in this session."""


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The session ended; ``error`` is ``None`` when it closed cleanly."""

    error: TCPLSError | None


#: Any event the core session reports to its owner.
SessionEvent = (
    AddressAdvertised
    | SessionEstablished
    | StreamOpened
    | TokenReceived
    | ConnectionAdded
    | ConnectionRemoved
    | PeerClosed
    | SessionClosed
)
