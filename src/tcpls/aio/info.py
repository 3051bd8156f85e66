"""What a session reports about each of its TCP connections: :class:`ConnectionInfo`.

It owns the report only: the core's counters of a connection, with the addresses
and the ``TCP_INFO`` of its transport.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tcpls.aio.sockets import host_port, tcp_info
from tcpls.core.io import ConnectionView

__all__ = ["ConnectionInfo", "connection_info"]


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One TCP connection of a session, as reported by ``session.connections``."""

    #: Connection ID (0 for the connection that ran the handshake; design: Record nonce).
    id: int
    #: ``(host, port)`` of our end.
    local_address: tuple[str, int] | None
    #: ``(host, port)`` of the peer's end.
    remote_address: tuple[str, int] | None
    #: Status in the session: ``active``, ``draining``, ``closing``...
    status: str
    #: Bytes sent on this connection (record payloads).
    bytes_sent: int
    #: Bytes received on this connection (record payloads).
    bytes_received: int
    #: Records sent on this connection.
    records_sent: int
    #: Records received on this connection.
    records_received: int
    #: Smoothed RTT from ``TCP_INFO``, seconds (``None`` where unavailable).
    rtt: float | None
    #: Congestion window from ``TCP_INFO``, segments.
    cwnd: int | None
    #: Records sent on this connection and not yet acknowledged by the peer.
    unacknowledged: int
    #: Smoothed RTT of our records, from the peer's ACKs (seal to ACK, the peer's ACK
    #: delay and our send queue included), seconds; ``None`` before the first sample
    #: (design: Failure detection).
    srtt: float | None = None
    #: Mean deviation of that RTT, seconds (``None`` before the first sample).
    rttvar: float | None = None
    #: Smallest RTT sample, seconds (``None`` before the first sample).
    min_rtt: float | None = None
    #: Whether the connection is suspect: its ACKs stopped for a probe timeout, so new
    #: data avoids it until they resume (design: Failure detection).
    suspect: bool = False


def connection_info(conn: ConnectionView, transport: asyncio.Transport | None) -> ConnectionInfo:
    """The report on ``conn``; its transport, when it has one, adds addresses and RTT."""
    sock = None
    local = remote = None
    if transport is not None:
        sock = transport.get_extra_info("socket")
        local = host_port(transport.get_extra_info("sockname"))
        remote = host_port(transport.get_extra_info("peername"))
    info = tcp_info(sock)
    return ConnectionInfo(
        id=conn.id,
        local_address=local or conn.local_address,
        remote_address=remote or conn.remote_address,
        status=conn.status,
        bytes_sent=conn.bytes_sent,
        bytes_received=conn.bytes_received,
        records_sent=conn.records_sent,
        records_received=conn.records_received,
        rtt=info.rtt if info else None,
        cwnd=info.cwnd if info else None,
        unacknowledged=conn.unacknowledged,
        srtt=conn.srtt,
        rttvar=conn.rttvar,
        min_rtt=conn.min_rtt,
        suspect=conn.suspect,
    )
