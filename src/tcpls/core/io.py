"""What the I/O layer must do for a session: the core's side of a one-way contract.

The core never touches a socket; the I/O layer never reads the core's state. Between
them, the I/O layer feeds bytes and time in (:class:`~tcpls.core.session.CoreSession`)
and asks this part, after each step, what to do:

* :meth:`IODuties.wakeups`: which stream readers and writers to wake;
* :meth:`IODuties.poll_transport`: what to do with the transport of a connection once
  its records are written: nothing, write EOF (our close_notify went out), write EOF
  because the connection was retired, or close it (the core let go of it);
* :meth:`IODuties.keeps_writing`, :meth:`IODuties.has_unacknowledged`,
  :meth:`IODuties.overdue_pings`: the facts the I/O layer needs to run TCP well
  (half-close, user timeouts, slow peers);
* :meth:`IODuties.stream` and :meth:`IODuties.connection`: small read-only views of a
  stream and a connection, for the application's reader, writer and reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from tcpls.config import SessionTuning
from tcpls.core.connection import Connection, ConnectionStatus
from tcpls.core.links import Links
from tcpls.core.liveness import Liveness
from tcpls.core.streams import Stream
from tcpls.core.streamset import StreamSet
from tcpls.tls.record import CipherSuite

__all__ = ["ConnectionView", "IODuties", "StreamView", "TransportAction"]

_WORKING = (ConnectionStatus.ACTIVE, ConnectionStatus.DRAINING)


class TransportAction(Enum):
    """What to do with a connection's transport after writing its records."""

    #: Nothing.
    KEEP = "keep"
    #: Our close_notify went out on it: write EOF (TLS closure is a half-close).
    WRITE_EOF = "write_eof"
    #: The connection was retired and everything on it acknowledged: write EOF; the
    #: core has forgotten it.
    RETIRE = "retire"
    #: The core let go of the connection (it failed, or is gone): close the transport.
    CLOSE = "close"


class StreamView:
    """A read-only view of one stream, for the application's reader and writer."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    @property
    def readable(self) -> int:
        """Bytes that arrived in order and were not read yet."""
        return self._stream.recv.readable

    @property
    def at_eof(self) -> bool:
        """Whether the peer ended the stream and every byte was read."""
        return self._stream.recv.at_eof

    @property
    def complete(self) -> bool:
        """Whether every byte up to the peer's FIN arrived."""
        return self._stream.recv.complete

    def find(self, separator: bytes, start: int = 0) -> int:
        """Where ``separator`` starts in the unread bytes (from ``start``), or -1."""
        return self._stream.recv.find(separator, start)

    @property
    def send_pending(self) -> int:
        """Bytes written and not sent yet."""
        return self._stream.send_pending

    @property
    def early_bytes(self) -> int:
        """How many of the stream's first bytes arrived as early data (0-RTT)."""
        return self._stream.early_bytes

    @property
    def fin_queued(self) -> bool:
        """Whether our direction was ended (FIN queued or sent)."""
        return self._stream.fin_queued

    @property
    def fin_acked(self) -> bool:
        """Whether the peer acknowledged our FIN and every byte before it."""
        return self._stream.fin_acked


@dataclass(frozen=True, slots=True)
class ConnectionView:
    """What the core knows of one connection, for reports."""

    id: int
    status: str
    local_address: tuple[str, int] | None
    remote_address: tuple[str, int] | None
    bytes_sent: int
    bytes_received: int
    records_sent: int
    records_received: int
    #: Records sent and not acknowledged yet.
    unacknowledged: int
    #: Smoothed RTT of our records on this connection, from the peer's ACKs, seconds
    #: (``None`` before the first sample; design: Failure detection).
    srtt: float | None = None
    #: Its mean deviation, seconds (``None`` likewise).
    rttvar: float | None = None
    #: The smallest RTT sample, seconds (``None`` likewise).
    min_rtt: float | None = None
    #: Whether the connection is suspect: its ACKs stopped for a probe timeout, new data
    #: avoids it (design: Failure detection).
    suspect: bool = False


class IODuties:
    """The I/O layer's questions to one session (see the module docstring)."""

    __slots__ = ("_links", "_streams", "_tuning")

    def __init__(self, links: Links, streams: StreamSet, tuning: SessionTuning) -> None:
        self._links = links
        self._streams = streams
        self._tuning = tuning

    def wakeups(self) -> tuple[set[int], set[int]]:
        """The stream IDs whose readers, then writers, may go on; taken (cleared here)."""
        streams = self._streams
        readable, writable = streams.readable, streams.writable
        if readable:
            streams.readable = set()
        if writable:
            streams.writable = set()
        return readable, writable

    @property
    def has_wakeups(self) -> bool:
        """Whether :meth:`wakeups` has something."""
        return bool(self._streams.readable or self._streams.writable)

    def poll_transport(self, connection_id: int) -> TransportAction:
        """What to do with this connection's transport now (each EOF is asked once).

        Once the session ended, only EOF after our close_notify is asked for: the I/O
        layer ends every connection itself after the last alert has gone out.
        """
        links = self._links
        conn = links.connections.get(connection_id)
        if conn is not None and conn.tls.close_notify_sent and not conn.eof_asked:
            conn.eof_asked = True
            return TransportAction.WRITE_EOF
        if links.closed:
            return TransportAction.KEEP
        if conn is None or conn.status is ConnectionStatus.FAILED:
            return TransportAction.CLOSE
        if conn.status is ConnectionStatus.DRAINING and conn.drained:
            links.finish_removal(connection_id)
            return TransportAction.RETIRE
        return TransportAction.KEEP

    def connected(
        self, connection_id: int, local: tuple[str, int] | None, remote: tuple[str, int] | None
    ) -> None:
        """The TCP connection is up, between these addresses."""
        conn = self._links.connections.get(connection_id)
        if conn is not None:
            conn.local_address = local or conn.local_address
            conn.remote_address = remote or conn.remote_address

    def start_handshake(self) -> None:
        """Client: the first TCP connection is up: send the ClientHello, and the early data
        queued on stream 0 when the ticket allows it (design: Early data)."""
        conn = self._links.connections[0]
        conn.tls.start()
        self._links.early.send(conn)

    @property
    def cipher_suite(self) -> CipherSuite | None:
        """The session's cipher suite (``None`` before the handshake completed)."""
        return self._links.cipher_suite

    def keeps_writing(self, connection_id: int) -> bool:
        """After the peer's FIN: whether our direction stays open (our close_notify has
        not gone out yet on this connection)."""
        conn = self._links.connections.get(connection_id)
        return conn is not None and not conn.tls.close_notify_sent

    def has_unacknowledged(self, connection_id: int) -> bool:
        """Whether records sent on this connection wait for the peer's ACK."""
        conn = self._links.connections.get(connection_id)
        return conn is not None and bool(conn.sent_log)

    def overdue_pings(self, now: float) -> list[int]:
        """Connections whose Ping is about to count as unanswered while they have data
        outstanding: if TCP delivered everything, the peer is slow, not gone (the I/O
        layer then calls ``set_peer_slow``; design: Failure detection)."""
        after, timeout = self._tuning.ping_after, self._tuning.ping_timeout
        return [
            cid
            for cid, conn in self._links.connections.items()
            if conn.ping_sent_at is not None
            and now >= conn.ping_deadline(after, timeout)
            and conn.sent_log
        ]

    def probes_due(self, liveness: Liveness, now: float) -> list[int]:
        """Connections about to become suspect (or to back off again): the I/O layer
        tells what TCP last heard from the peer on them (``set_transport_heard``), since
        a path that carries TCP's ACKs is slow, not dead (design: Failure detection)."""
        if not self._links.tcpls:
            return []
        return [c.id for c in liveness.probes_due(now, self._links.connections.values())]

    def has_working_connection(self) -> bool:
        """Whether a connection carries the session (joins still in their hello do not)."""
        return any(c.status in _WORKING for c in self._links.connections.values())

    def stream(self, stream_id: int) -> StreamView | None:
        """A view of the stream, or ``None`` if it is gone."""
        stream = self._streams.table.get(stream_id)
        return StreamView(stream) if stream is not None else None

    def connection(self, connection_id: int) -> ConnectionView | None:
        """A view of the connection, or ``None`` if it is gone."""
        conn = self._links.connections.get(connection_id)
        return None if conn is None else _view(conn)


def _view(conn: Connection) -> ConnectionView:
    timing = conn.timing
    return ConnectionView(
        id=conn.id,
        status=conn.status.value,
        local_address=conn.local_address,
        remote_address=conn.remote_address,
        bytes_sent=conn.bytes_sent,
        bytes_received=conn.bytes_received,
        records_sent=conn.records_sent,
        records_received=conn.records_received,
        unacknowledged=len(conn.sent_log),
        srtt=timing.srtt if timing.samples else None,
        rttvar=timing.rttvar if timing.samples else None,
        min_rtt=timing.min_rtt,
        suspect=timing.suspect,
    )
