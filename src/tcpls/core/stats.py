"""Counters of a session, for ``session.stats()``: per connection, per open stream, totals.

The core's side of the statistics: what it counts anyway (bytes and records per
connection, stream offsets, the bytes of the streams already gone, the bytes sent
again after failures), read when asked, so that counting costs the data path nothing.
:mod:`tcpls.aio.stats` adds each connection's ``TCP_INFO``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcpls.core.session import CoreSession

__all__ = ["ConnectionCounters", "CoreStats", "StreamCounters", "core_stats"]


@dataclass(frozen=True, slots=True)
class ConnectionCounters:
    """What the session counted on one of its TCP connections."""

    #: Connection ID (0: the connection of the handshake; a join's is its token's sequence).
    id: int
    #: ``active``, ``draining``, ``closing``...
    status: str
    #: ``(host, port)`` of our end, when known.
    local_address: tuple[str, int] | None
    #: ``(host, port)`` of the peer's end, when known.
    remote_address: tuple[str, int] | None
    #: Bytes of records sent on it (TLS records, headers and tags included).
    bytes_sent: int
    #: Bytes received on it.
    bytes_received: int
    #: Records sent on it.
    records_sent: int
    #: Records received on it.
    records_received: int
    #: Records sent on it that the peer has not acknowledged yet.
    unacknowledged_records: int


@dataclass(frozen=True, slots=True)
class StreamCounters:
    """The bytes of one open stream."""

    #: Stream ID (even: opened by the client, odd: by the server).
    id: int
    #: Bytes the application wrote on it.
    bytes_written: int
    #: Bytes sent (the offset after the last byte sent at least once).
    bytes_sent: int
    #: Bytes the peer acknowledged, from the start of the stream without a gap.
    bytes_acknowledged: int
    #: Bytes received in order (read by the application or not).
    bytes_received: int
    #: Whether our FIN was sent.
    fin_sent: bool
    #: Whether the peer's FIN arrived (the stream's final size is known).
    fin_received: bool


@dataclass(frozen=True, slots=True)
class CoreStats:
    """The counters of a session (:func:`core_stats`)."""

    #: The connections the session has now.
    connections: tuple[ConnectionCounters, ...]
    #: The streams open now (a finished stream only counts in the totals).
    streams: tuple[StreamCounters, ...]
    #: Stream bytes sent over the whole session, streams gone included.
    stream_bytes_sent: int
    #: Stream bytes received in order over the whole session, streams gone included.
    stream_bytes_received: int
    #: Stream bytes handed back for sending again by connections that failed.
    bytes_reinjected: int
    #: Records sealed with the session's keys, all connections together.
    records_sealed: int


def core_stats(core: CoreSession) -> CoreStats:
    """The counters of ``core`` now."""
    connections = tuple(
        ConnectionCounters(
            id=conn.id,
            status=conn.status.value,
            local_address=conn.local_address,
            remote_address=conn.remote_address,
            bytes_sent=conn.bytes_sent,
            bytes_received=conn.bytes_received,
            records_sent=conn.records_sent,
            records_received=conn.records_received,
            unacknowledged_records=len(conn.sent_log),
        )
        for conn in core.connections.values()
    )
    streams = tuple(
        StreamCounters(
            id=stream.id,
            bytes_written=stream.send.end,
            bytes_sent=stream.send_next,
            bytes_acknowledged=stream.acked_to,
            bytes_received=stream.recv.delivered,
            fin_sent=stream.fin_sent,
            fin_received=stream.recv.final_size is not None,
        )
        for stream in core.streams.values()
    )
    stream_set = core.stream_set
    return CoreStats(
        connections=connections,
        streams=streams,
        stream_bytes_sent=stream_set.ended_sent + sum(s.bytes_sent for s in streams),
        stream_bytes_received=stream_set.ended_received + sum(s.bytes_received for s in streams),
        bytes_reinjected=core.acks.reinjected_bytes,
        records_sealed=core.records_sealed,
    )
