"""``session.stats()``: the counters of a session, with each connection's ``TCP_INFO``.

:class:`SessionStats` is a plain snapshot: the core's counters
(:mod:`tcpls.core.stats`: bytes and records per connection, bytes per open stream,
totals) and, for each connection whose socket is still there, the kernel's smoothed
RTT, congestion window and retransmissions. Reading it costs the data path nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from tcpls.aio.sockets import tcp_info
from tcpls.core.io import ConnectionView
from tcpls.core.session import CoreSession
from tcpls.core.stats import StreamCounters, core_stats

__all__ = ["ConnectionStats", "SessionStats", "StreamCounters", "session_stats"]


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """One TCP connection of a session: the session's counters, then ``TCP_INFO``."""

    #: Connection ID (0: the connection of the handshake; a join's is its token's sequence).
    id: int
    #: ``active``, ``draining``, ``closing``...
    status: str
    #: ``(host, port)`` of our end.
    local_address: tuple[str, int] | None
    #: ``(host, port)`` of the peer's end.
    remote_address: tuple[str, int] | None
    #: Bytes of TLS records sent on it.
    bytes_sent: int
    #: Bytes received on it.
    bytes_received: int
    #: Records sent on it.
    records_sent: int
    #: Records received on it.
    records_received: int
    #: Records sent on it and not acknowledged by the peer yet.
    unacknowledged_records: int
    #: Smoothed RTT from ``TCP_INFO``, seconds (``None``: not available, no socket).
    rtt: float | None
    #: RTT variance from ``TCP_INFO``, seconds.
    rttvar: float | None
    #: Congestion window from ``TCP_INFO``, segments.
    cwnd: int | None
    #: Segments TCP retransmitted over the connection's life (``tcpi_total_retrans``).
    retransmits: int | None
    #: Segments in flight and not acknowledged by the peer's TCP.
    tcp_unacked: int | None


@dataclass(frozen=True, slots=True)
class SessionStats:
    """What ``session.stats()`` returns: a snapshot of the session's counters."""

    #: The session's TCP connections now.
    connections: tuple[ConnectionStats, ...]
    #: The streams open now, by ID (finished streams only count in the totals).
    streams: dict[int, StreamCounters]
    #: Stream bytes sent over the whole session, streams gone included.
    stream_bytes_sent: int
    #: Stream bytes received in order over the whole session, streams gone included.
    stream_bytes_received: int
    #: Stream bytes sent again because the connection that carried them failed.
    bytes_reinjected: int
    #: Stream bytes sent again elsewhere while their connection was suspect (duplicates
    #: when it was merely slow; design: Failure detection).
    bytes_resent: int
    #: Records sealed with the session's keys, all connections together.
    records_sealed: int


def _connection(
    counters: ConnectionView, transport: asyncio.BaseTransport | None
) -> ConnectionStats:
    sock = transport.get_extra_info("socket") if transport is not None else None
    info = tcp_info(sock)
    return ConnectionStats(
        id=counters.id,
        status=counters.status,
        local_address=counters.local_address,
        remote_address=counters.remote_address,
        bytes_sent=counters.bytes_sent,
        bytes_received=counters.bytes_received,
        records_sent=counters.records_sent,
        records_received=counters.records_received,
        unacknowledged_records=counters.unacknowledged,
        rtt=info.rtt if info else None,
        rttvar=info.rttvar if info else None,
        cwnd=info.cwnd if info else None,
        retransmits=info.total_retransmits if info else None,
        tcp_unacked=info.unacked if info else None,
    )


def session_stats(
    core: CoreSession, transports: Mapping[int, asyncio.BaseTransport | None]
) -> SessionStats:
    """The counters of ``core``; ``transports`` by connection ID give ``TCP_INFO``."""
    stats = core_stats(core)
    return SessionStats(
        connections=tuple(_connection(c, transports.get(c.id)) for c in stats.connections),
        streams={s.id: s for s in stats.streams},
        stream_bytes_sent=stats.stream_bytes_sent,
        stream_bytes_received=stats.stream_bytes_received,
        bytes_reinjected=stats.bytes_reinjected,
        bytes_resent=stats.bytes_resent,
        records_sealed=stats.records_sealed,
    )
