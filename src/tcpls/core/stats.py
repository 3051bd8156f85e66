"""Counters of a session, for ``session.stats()``: per connection, per open stream, totals.

The core's side of the statistics: what it counts anyway (bytes and records per
connection, stream offsets, the bytes of the streams already gone, the bytes sent
again after failures), read when asked, so that counting costs the data path nothing.
:mod:`tcpls.aio.stats` adds each connection's ``TCP_INFO``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcpls.core.io import ConnectionView
from tcpls.core.session import CoreSession

__all__ = ["CoreStats", "StreamCounters", "core_stats"]


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
    connections: tuple[ConnectionView, ...]
    #: The streams open now (a finished stream only counts in the totals).
    streams: tuple[StreamCounters, ...]
    #: Stream bytes sent over the whole session, streams gone included.
    stream_bytes_sent: int
    #: Stream bytes received in order over the whole session, streams gone included.
    stream_bytes_received: int
    #: Stream bytes handed back for sending again by connections that failed.
    bytes_reinjected: int
    #: Stream bytes sent again elsewhere while their connection was suspect (duplicates
    #: when it was not dead; design: Failure detection).
    bytes_resent: int
    #: Records sealed with the session's keys, all connections together.
    records_sealed: int


def core_stats(core: CoreSession) -> CoreStats:
    """The counters of ``core`` now."""
    views = (core.io.connection(cid) for cid in core.connections)
    connections = tuple(view for view in views if view is not None)
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
        bytes_resent=core.acks.resent_bytes,
        records_sealed=core.records_sealed,
    )
