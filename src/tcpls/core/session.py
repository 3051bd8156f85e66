"""The TCPLS session: streams over one or more TCP connections. Sans-I/O.

Theory of operation
-------------------
A :class:`Session` is a small facade over parts that each own one concern:

* :class:`~tcpls.core.streamset.StreamSet`: the streams, their IDs and limits, and the
  memory they hold;
* :class:`~tcpls.core.acks.AckTracker`: the ACKs we owe and the retransmission log;
* :class:`~tcpls.core.liveness.Liveness`: Ping probes and failure detection;
* :class:`~tcpls.core.joins.TokenBook` and :class:`~tcpls.core.addresses.AddressBook`:
  join tokens and the peer's addresses;
* :class:`~tcpls.core.scheduler.Scheduler`: which connection carries which stream;
* :class:`~tcpls.core.sender.RecordSender` and
  :class:`~tcpls.core.receiver.FrameReceiver`: the records out and the frames in;
* :class:`~tcpls.core.timers.TimerSet`: the session-wide deadlines;
* :class:`~tcpls.core.links.Links`: the connections' life cycle (joins, failover,
  closing), which the session inherits its connection handling from.

It never touches a socket or a clock: the I/O layer passes bytes and the current time
in, and takes bytes (per connection), events, and the streams to wake out.

Input: bytes of connection *c* go to its TLS connection, which opens records and hands
each application record to the receiver. Output (the pull model): when the transport of
connection *c* can take more bytes, the I/O layer calls :meth:`Session.transmit`.
Failure (design: Failure detection): what a dead connection carried unacknowledged goes
out again on another one. Time: :meth:`next_deadline` says when :meth:`handle_timer`
must run next (design: Timers).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Generic, TypeVar

from tcpls.config import SessionTuning
from tcpls.core.acks import AckTracker, NoAcks
from tcpls.core.addresses import AddressBook
from tcpls.core.connection import Connection, ConnectionStatus
from tcpls.core.events import SessionEvent
from tcpls.core.joins import TokenBook
from tcpls.core.links import CONNECTION_COST, SESSION_COST, TRIM_AFTER, Links, SessionState
from tcpls.core.liveness import Liveness
from tcpls.core.receiver import FrameReceiver
from tcpls.core.scheduler import Scheduler, SchedulerName
from tcpls.core.sender import RecordSender
from tcpls.core.streams import Stream
from tcpls.core.streamset import StreamSet
from tcpls.core.timers import Timer, TimerSet
from tcpls.core.tokens import TokenRegistry
from tcpls.errors import ConnectionClosedError, TCPLSError
from tcpls.tls.connection import TLSConnection
from tcpls.tls.engine import HandshakeEngine
from tcpls.wire.frames import Frame

__all__ = ["CONNECTION_COST", "SESSION_COST", "Session", "SessionState"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _Part(Generic[T]):
    """An attribute of the session that one of its parts owns (read-only here)."""

    __slots__ = ("_name", "_part")

    def __init__(self, part: str, name: str) -> None:
        self._part = part
        self._name = name

    def __get__(self, session: Any, owner: type | None = None) -> T:
        value: T = getattr(getattr(session, self._part), self._name)
        return value


class Session:
    """A TCPLS (or plain TLS) session, sans-I/O. See the module docstring."""

    #: Whether the session ended.
    closed = _Part[bool]("links", "closed")
    state = _Part[SessionState]("links", "state")
    #: ``True`` for TCPLS, ``False`` for plain TLS fallback, ``None`` during the handshake.
    tcpls = _Part[bool | None]("links", "tcpls")
    #: Why the session ended (``None``: cleanly, or not ended).
    error = _Part[TCPLSError | None]("links", "error")
    #: The peer sent close_notify on every connection it has.
    peer_closed = _Part[bool]("links", "peer_closed")
    #: The TCP connections by Connection ID.
    connections = _Part[dict[int, Connection]]("links", "connections")
    close_requested = _Part[bool]("links", "close_requested")
    session_tickets = _Part[list[object]]("links", "session_tickets")
    #: The engine that ran the handshake (for the exporter), kept after failover.
    handshake_engine = _Part[HandshakeEngine | None]("links", "handshake_engine")
    max_connections = _Part[int]("links", "max_connections")
    #: The streams by ID.
    streams = _Part[dict[int, Stream]]("stream_set", "table")
    #: Stream IDs whose readers may have something new (the I/O layer clears it).
    readable = _Part[set[int]]("stream_set", "readable")
    #: Stream IDs whose writers may go on (the I/O layer clears it).
    writable = _Part[set[int]]("stream_set", "writable")
    #: Memory of the out-of-order stream data held for reassembly, all streams.
    reassembly_held = _Part[int]("stream_set", "reassembly_held")
    #: Memory of the in-order stream data the application has not read, all streams.
    receive_buffered = _Part[int]("stream_set", "receive_buffered")
    #: Bytes the application wrote on all streams that never left yet.
    send_pending_total = _Part[int]("stream_set", "send_pending")
    #: Stream bytes sent and not yet acknowledged, over all connections.
    unacked_bytes = _Part[int]("acks", "unacked_bytes")
    #: Whether records are kept until acknowledged (off only to measure what it costs).
    reliable = _Part[bool]("acks", "logs")
    #: Client: spare join tokens by sequence number.
    tokens = _Part[dict[int, bytes]]("token_book", "spare")
    #: Addresses the peer advertised (design: Addresses), by address ID.
    peer_addresses = _Part[dict[int, tuple[str, int]]]("addresses", "peer")
    #: Addresses the peer withdrew: no new connection may go to them (draft-04 §5.2.8).
    withdrawn_addresses = _Part[set[tuple[str, int]]]("addresses", "withdrawn")
    #: Records sealed with the session's application keys, over all connections.
    records_sealed = _Part[int]("sender", "records_sealed")

    def __init__(
        self,
        *,
        is_client: bool,
        tuning: SessionTuning | None = None,
        scheduler: SchedulerName = "aggregate",
        max_connections: int = 4,
        token_registry: TokenRegistry[Session] | None = None,
        reliable: bool = True,
        server_name: str | None = None,
    ) -> None:
        self.is_client = is_client
        self.tuning = tuning = tuning or SessionTuning()
        self._events: deque[SessionEvent] = deque()
        control: deque[Frame] = deque()
        self.stream_set = StreamSet(is_client, tuning, self._events)
        self.acks = (AckTracker if reliable else NoAcks)(tuning, self.stream_set, control)
        self.scheduler = Scheduler(scheduler)
        self.liveness = Liveness(tuning)
        self.token_book: TokenBook[object] = TokenBook(self, token_registry)  # type: ignore[arg-type]
        self.addresses = AddressBook()
        self.timers = TimerSet()
        self.sender = RecordSender(tuning, {}, self.stream_set, self.acks, self.scheduler, control)
        self.links = Links(
            is_client=is_client,
            tuning=tuning,
            max_connections=max_connections,
            server_name=server_name,
            events=self._events,
            control=control,
            streams=self.stream_set,
            acks=self.acks,
            tokens=self.token_book,
            timers=self.timers,
            sender=self.sender,
        )
        self.sender.use_connections(self.links.connections)
        self.receiver = FrameReceiver(
            is_client=is_client,
            hooks=self.links,
            streams=self.stream_set,
            acks=self.acks,
            tokens=self.token_book,
            addresses=self.addresses,
            events=self._events,
        )
        self.links.attach(self.receiver)

    @property
    def now(self) -> float:
        """The time of the last input, output or timer call."""
        return self.links.now

    @now.setter
    def now(self, now: float) -> None:
        self.links.now = now
        self.receiver.now = now

    @property
    def rejoin(self) -> bool:
        """Client: the I/O layer joins a new connection when the last one fails
        (break-before-make); without it the session ends with the last connection."""
        return self.links.rejoin

    @rejoin.setter
    def rejoin(self, value: bool) -> None:
        self.links.rejoin = value

    # ------------------------------------------------------------------ events

    @property
    def has_events(self) -> bool:
        """Whether :meth:`next_event` has something."""
        return bool(self._events)

    def next_event(self) -> SessionEvent | None:
        """The next session event, or ``None``."""
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------- connections

    def add_connection(self, tls: TLSConnection, connection_id: int = 0) -> Connection:
        """Register the TCP connection ``connection_id`` (0: the one that runs the handshake)."""
        return self.links.add(tls, connection_id)

    def token_for_handshake(self) -> bytes | None:
        """Server: the token to send in ``tcpls_token`` (sequence 1), if joins are allowed."""
        if self.max_connections < 2:
            return None
        issued = self.token_book.issue()
        return issued[1] if issued is not None else None

    def redeem_join(self, tls: TLSConnection, sequence: int) -> Connection | None:
        """Server: a join with this session's token ``sequence`` arrived (see
        :meth:`Links.redeem_join`)."""
        return self.links.redeem_join(tls, sequence)

    def take_token(self) -> tuple[int, bytes] | None:
        """Client: a spare token ``(sequence, token)`` for a join, removed from the store."""
        return self.token_book.take()

    def start_join(self, **tls_kwargs: object) -> tuple[TLSConnection, int]:
        """Client: a new connection that joins this session with a spare token (see
        :meth:`Links.start_join`; design: Joins)."""
        return self.links.start_join(**tls_kwargs)

    def abandon_join(self, connection_id: int, error: TCPLSError | None = None) -> None:
        """Client: the TCP connection for a join never came up; forget it (an unsent token
        goes back to the spare ones)."""
        self.links.abandon_join(connection_id, error)

    def advertise_address(self, address_id: int, host: str, port: int) -> None:
        """Announce an extra address of ours with New Address (design: Addresses)."""
        self.links.advertise_address(address_id, host, port)

    def withdraw_address(self, address_id: int) -> None:
        """Withdraw an advertised address with Remove Address (design: Addresses)."""
        self.links.withdraw_address(address_id)

    def remove_connection(self, connection_id: int) -> None:
        """Retire one connection gracefully: no new data, then FIN once acknowledged
        (design: Closing)."""
        self.links.remove(connection_id)

    def connection_drained(self, connection_id: int) -> bool:
        """Whether a draining connection has nothing unacknowledged left (time for FIN)."""
        conn = self.connections.get(connection_id)
        return conn is not None and conn.status is ConnectionStatus.DRAINING and not conn.sent_log

    def finish_removal(self, connection_id: int) -> None:
        """The I/O layer sent FIN on a drained connection: forget it."""
        self.links.finish_removal(connection_id)

    def close(self, now: float | None = None) -> None:
        """Close gracefully: flush and wait for ACKs, then ``close_notify`` everywhere.

        ``now`` starts the close deadline; without it, the time of the last input or
        timer is used (design: Closing).
        """
        if now is not None:
            self.now = now
        self.links.close()

    # ------------------------------------------------------------------ input

    def _touch(self, now: float) -> None:
        """Bytes arrived at ``now`` (the handshake deadline starts with the first ones)."""
        self.now = now
        timers = self.timers
        timers.set(Timer.TRIM, now + TRIM_AFTER)  # reading may take a buffer again
        if self.links.state is SessionState.HANDSHAKE and timers.get(Timer.HANDSHAKE) is None:
            timers.set(Timer.HANDSHAKE, now + self.tuning.handshake_timeout)

    def get_buffer(self, connection_id: int) -> memoryview:
        """Writable space for bytes of this connection (``BufferedProtocol.get_buffer``)."""
        return self.connections[connection_id].tls.get_buffer()

    def buffer_updated(self, connection_id: int, nbytes: int, now: float) -> None:
        """``nbytes`` arrived in the buffer of :meth:`get_buffer`."""
        self._touch(now)
        conn = self.connections.get(connection_id)
        if conn is None:
            return
        Liveness.heard_from(conn, nbytes, now)
        conn.tls.buffer_updated(nbytes)
        self.links.drain_tls(conn)

    def receive_data(self, connection_id: int, data: bytes, now: float) -> None:
        """Bytes arrived on a connection (copying variant of :meth:`buffer_updated`)."""
        self._touch(now)
        conn = self.connections.get(connection_id)
        if conn is None:
            return
        Liveness.heard_from(conn, len(data), now)
        conn.tls.receive_data(data)
        self.links.drain_tls(conn)

    def poll_connection(self, connection_id: int, now: float) -> None:
        """Take the events of a connection whose bytes were fed to its TLS directly."""
        self._touch(now)
        conn = self.connections.get(connection_id)
        if conn is not None:
            self.links.drain_tls(conn)

    def receive_eof(self, connection_id: int, now: float) -> None:
        """A connection delivered EOF."""
        self.now = now
        conn = self.connections.get(connection_id)
        if conn is not None:
            conn.tls.receive_eof()
            self.links.drain_tls(conn)

    def connection_lost(self, connection_id: int, error: TCPLSError | None, now: float) -> None:
        """The TCP connection is gone (reset, timeout, or closed after EOF)."""
        self.now = now
        conn = self.connections.get(connection_id)
        if conn is not None:
            self.links.lost(conn, error)

    def fail_connection(self, connection_id: int, error: TCPLSError, now: float) -> None:
        """The I/O layer detected a dead connection (timeout, unanswered Ping)."""
        self.now = now
        conn = self.connections.get(connection_id)
        if conn is not None:
            self.links.connection_failed(conn, error)

    # --------------------------------------------------------------- streams

    def open_stream(self) -> int:
        """Open a new stream; returns its ID (even for a client, odd for a server).

        (design: Streams)
        """
        self._check_open()
        if not self.tcpls:
            raise TCPLSError("plain TLS fallback carries exactly one stream")
        return self.stream_set.open_local()

    def _check_open(self) -> None:
        if self.state is SessionState.CLOSED:
            raise ConnectionClosedError(
                f"session closed: {self.error}" if self.error else "session closed"
            )
        if self.state is SessionState.HANDSHAKE:
            raise TCPLSError("the session is not established yet")

    def send(self, stream_id: int, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes on a stream; they leave when a connection pulls records."""
        self._check_open()
        if self.close_requested:
            raise ConnectionClosedError("the session is closing")
        self.stream_set.queue(stream_id, data)

    def send_eof(self, stream_id: int) -> None:
        """End our direction of the stream (FIN) after the queued bytes."""
        self._check_open()
        self.stream_set.queue_eof(stream_id)

    def read(self, stream_id: int, n: int = -1) -> bytes:
        """Up to ``n`` bytes that arrived in order on a stream (``-1``: all)."""
        return self.stream_set.read(stream_id, n)

    def pin_stream(self, stream_id: int, connection_id: int | None) -> None:
        """Keep a stream on one connection (``None``: let the scheduler choose)."""
        stream = self.stream_set.require(stream_id)
        if connection_id is not None and connection_id not in self.connections:
            raise ValueError(f"no connection {connection_id} in this session")
        stream.pin = connection_id

    @property
    def send_blocked(self) -> bool:
        """Whether the streams together hold more unsent bytes than ``session_send_buffer``.

        ``drain()`` then waits, whatever its own stream holds, until half of it left.
        """
        return self.stream_set.send_blocked

    @property
    def reading_paused(self) -> bool:
        """Whether received data waits for the application: stop reading the sockets.

        Reading pauses while one stream holds more unread data than
        ``stream_receive_buffer``, or all streams together more than
        ``session_receive_buffer`` (counted in real memory), and resumes when the
        application has read half of it (design: Backpressure).
        """
        return self.stream_set.reading_paused

    @property
    def reassembly_bytes(self) -> int:
        """Stream bytes held out of order now, over all streams (for measurements).

        :attr:`reassembly_held` is what they cost in memory, which is what limits use.
        """
        return sum(stream.recv.held_bytes for stream in self.streams.values())

    def memory_use(self) -> int:
        """An estimate of the memory this session holds, in bytes (for a server's budget).

        A fixed cost per session and per connection, the record buffers of each
        connection, received data not read yet (reassembly included), and stream
        bytes not sent yet or not acknowledged yet.
        """
        total = SESSION_COST + self.stream_set.memory + self.acks.unacked_bytes
        for conn in self.connections.values():
            total += CONNECTION_COST + conn.tls.buffer_memory
        return total

    # ------------------------------------------------------------------ output

    def wants_transmit(self, connection_id: int, now: float | None = None) -> bool:
        """Whether :meth:`transmit` would produce bytes for this connection now."""
        conn = self.connections.get(connection_id)
        if conn is None:
            return False
        wants = self.sender.wants(conn)
        if wants is not None:
            return wants
        if self.close_requested and self.links.flushed():
            return True
        return self.acks.any_due(self.now if now is None else now)

    def transmit(self, connection_id: int, now: float, budget: int = 256 * 1024) -> bytes:
        """Records for this connection, up to about ``budget`` bytes; ``b""`` if none."""
        self.now = now
        conn = self.connections.get(connection_id)
        if conn is None:
            return b""
        tls = conn.tls
        sender = self.sender
        if tls.can_send and not self.closed:
            try:
                if self.tcpls:
                    sender.fill(conn, budget, now)
                    if sender.key_exhausted:
                        self._key_limit_reached()
                else:
                    sender.fill_plain(conn, budget, now)
                if self.close_requested and self.links.flushed():
                    if self.tcpls and self.acks.logs:
                        # acknowledge everything received before the last record we send
                        self.acks.all_due()
                        sender.fill(conn, budget, now)
                    self.links.send_close_notify()
            except TCPLSError as exc:
                self.links.fail(exc)
        data = tls.data_to_send()
        if data:
            conn.bytes_sent += len(data)
            self.timers.set(Timer.TRIM, now + TRIM_AFTER)  # sealing may take a buffer
        return data

    def _key_limit_reached(self) -> None:
        """TCPLS: the session's write key sealed as many records as it safely may.

        All the connections of a session share its keys and TCPLS has no KeyUpdate:
        the session closes, gracefully, before the key's usage limit (design: Key
        usage limits). Plain TLS updates its keys instead.
        """
        if self.close_requested:
            return
        sealed = self.sender.records_sealed
        logger.info("closing a session whose key sealed %d records", sealed)
        self.links.close_error = ConnectionClosedError(
            f"the session sent {sealed} records under one key, the most "
            "TLS 1.3 allows for its cipher; a new session is needed"
        )
        self.links.close()

    # ------------------------------------------------------------------ timers

    def _activity(self) -> float:
        """When stream data last moved, either way (idleness is measured from it)."""
        latest = max(self.stream_set.last_sent, self.links.last_activity)
        for conn in self.connections.values():
            received = conn.last_data
            if received is not None and received > latest:
                latest = received
        return latest

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next (``None``: no timer).

        The minimum of the session-wide timers, the delayed ACKs and the probes. Every
        deadline is cleared or moved by :meth:`handle_timer` once it has passed, so a
        deadline in the past fires once and never re-arms itself (design: Timers).
        """
        if self.state is SessionState.CLOSED:
            return None  # a closed session runs no timer
        deadlines = [self.timers.next(), self.acks.next_deadline()]
        if self.tcpls:
            deadlines.append(self.liveness.next_deadline(self.connections.values()))
        idle = self.tuning.idle_timeout
        if self.state is SessionState.ESTABLISHED and idle is not None:
            deadlines.append(self._activity() + idle)
        return min((d for d in deadlines if d is not None), default=None)

    def handle_timer(self, now: float) -> None:
        """Run the timers that expired (the I/O layer then transmits).

        Delayed ACKs become due (design: ACK policy); connections get Pings, or fail
        when a Ping went unanswered (design: Failure detection); a server session left
        without connections ends if none joined again within ``rejoin_timeout``; the
        handshake, close and idle deadlines; record buffers are given back a second
        after the last I/O.
        """
        self.now = now
        tuning = self.tuning
        self.acks.handle_timer(now)
        if self.tcpls:
            for conn, error in self.liveness.handle_timer(now, list(self.connections.values())):
                self.links.connection_failed(conn, error)
        timers = self.timers
        if timers.expired(Timer.REJOIN, now):
            self.links.set_closed(
                ConnectionClosedError(
                    f"no connection joined again within {tuning.rejoin_timeout:g} s"
                )
            )
        state = self.state
        if state is SessionState.HANDSHAKE and timers.expired(Timer.HANDSHAKE, now):
            self.links.fail(
                ConnectionClosedError(
                    f"the TLS handshake did not complete within {tuning.handshake_timeout:g} s"
                )
            )
        elif state is SessionState.CLOSING and timers.expired(Timer.CLOSE, now):
            self.links.fail(
                ConnectionClosedError(
                    f"the peer did not finish closing within {tuning.close_timeout:g} s"
                )
            )
        elif (
            state is SessionState.ESTABLISHED
            and tuning.idle_timeout is not None
            and now >= self._activity() + tuning.idle_timeout
        ):
            logger.info("closing a session idle for %g s", tuning.idle_timeout)
            self.links.close_error = ConnectionClosedError(
                f"the session was idle for {tuning.idle_timeout:g} s"
            )
            self.links.close()
        if timers.expired(Timer.TRIM, now):
            timers.cancel(Timer.TRIM)
            for conn in self.connections.values():
                conn.tls.trim()

    def set_reading_paused(self, paused: bool, now: float) -> None:
        """The I/O layer paused (or resumed) reading every connection (backpressure).

        While it does not read, the answers to our Pings would wait unread, so
        liveness probes are suspended; when reading resumes, the silence of the
        pause does not count against any connection.
        """
        self.now = now
        self.liveness.set_reading_paused(paused, now, self.connections.values())

    def set_peer_slow(self, connection_id: int, now: float) -> None:
        """The I/O layer saw TCP deliver our unanswered Ping: the peer is slow, not gone.

        Its application does not read (its own backpressure), so our Ping waits in its
        socket. Probes of that connection stop until something arrives from it again
        (design: Failure detection).
        """
        self.now = now
        conn = self.connections.get(connection_id)
        if conn is not None:
            self.liveness.peer_slow(conn)

    def set_flow_blocked(
        self, connection_id: int, blocked: bool, now: float | None = None
    ) -> None:
        """The I/O layer saw the peer's TCP window closed (or open again) on a connection."""
        if now is not None:
            self.now = now
        conn = self.connections.get(connection_id)
        if conn is not None:
            self.liveness.flow_blocked(conn, blocked, self.now)

    @property
    def close_notify_sent(self) -> bool:
        """Whether we sent ``close_notify`` (the I/O layer then writes EOF)."""
        return self.close_requested and all(
            c.tls.close_notify_sent for c in self.connections.values()
        )

    def abort(self, error: TCPLSError | None = None) -> None:
        """Close at once, without flushing (sends an alert when ``error`` is a ProtocolError)."""
        self.links.fail(error or ConnectionClosedError("session aborted"))
